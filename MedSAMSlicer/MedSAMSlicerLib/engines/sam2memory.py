"""Sam2MemorySession: SAM 2's memory bank over the slices of one volume, fed from cached slice embeddings.

This is the piece MedSAM2's fork adds to sam2's video predictor (frames come
from a preprocessed volume instead of a folder of JPEGs), written on top of
the upstream SAM2Base: slices are frames, slice index k is the frame index,
and each slice's image features come from the caller (the embedding cache), so
no slice is ever encoded by the session itself.

- ``condition(k, embedding, prompts)``: a box and/or clicks on slice k make it
  a conditioning slice, decoded as the video predictor's add_new_points_or_box
  does (box as points labelled 2 and 3; the slice's earlier logits as mask input
  when it was already tracked) and encoded into memory at once, as
  propagate_in_video's preflight does. Every slice that receives prompts stays
  a conditioning slice (add_all_frames_to_correct_as_cond).
- ``track(k, embedding, reverse)``: segment slice k from the memory of the
  conditioning slices and of the slices tracked before it in this walk.
- The bank is bounded: conditioning slices are kept, tracked slices only up to
  ``maxMemoryFrames`` (the newest; the default covers everything SAM 2 looks
  back at: num_maskmem - 1 memories and max_obj_ptrs_in_encoder - 1 pointers).
  ``startWalk()`` drops tracked memories, so each direction starts from the
  conditioning slices only, as MedSAM2's 3D inference resets its state between
  the forward and the reverse pass.

Not thread-safe: one session is driven by one job at a time. torch is imported
through the engine.
"""

from typing import Dict, Optional

import numpy as np

from .base import DecodeResult, Prompts, SliceEmbedding
from ..core.errors import InputError


class Sam2MemorySession:
    """Memory propagation state of one object through ``sliceCount`` slices, for a Sam2Engine."""

    def __init__(self, engine, sliceCount: int, maxMemoryFrames: Optional[int] = None):
        model = engine.model
        self.engine = engine
        self.sliceCount = int(sliceCount)
        lookBack = max(model.num_maskmem - 1, model.max_obj_ptrs_in_encoder - 1)
        self.maxMemoryFrames = int(maxMemoryFrames) if maxMemoryFrames is not None else lookBack
        if self.maxMemoryFrames < 1:
            raise InputError(f"maxMemoryFrames must be 1 or more, got {maxMemoryFrames}.")
        self.outputs = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}  # SAM2Base's output_dict
        self.conditioning: Dict[int, Prompts] = {}
        self.tracked: Dict[int, bool] = {}  # slice -> tracked in reverse (decreasing k)
        self.lowResLogits: Dict[int, object] = {}  # slice -> (1, 1, h, w) fp16 CPU tensor, every slice visited
        self.steps = 0  # memory-conditioned decodes run (tracking and conditioning)
        self._device = engine.device
        self._maskmemPos = None  # the memory encoder's positional encoding: the same for every slice

    # ------------------------------------------------------------------ public

    def condition(self, k: int, embedding: SliceEmbedding, prompts: Prompts) -> DecodeResult:
        """Make slice k a conditioning slice with ``prompts`` (box and/or clicks); returns its result.

        The slice's earlier logits (or prompts.previousLowResLogits) go in as the
        mask input, so clicks on a tracked slice correct its mask. Raises
        PromptError for empty or off-image prompts.
        """
        torch = self.engine._torch
        points, maskInput = self.engine.promptTensors(embedding, prompts)
        if maskInput is None and k in self.lowResLogits:
            maskInput = self.lowResLogits[k].to(self.engine.device, torch.float32)
        if maskInput is not None:
            maskInput = torch.clamp(maskInput, -32.0, 32.0)
        isInitial = k not in self.tracked or not self.outputs["cond_frame_outputs"]
        reverse = self.tracked.get(k, False)
        pointInputs = {"point_coords": points[0], "point_labels": points[1]}
        result, compact = self._step(k, embedding, pointInputs, isInitial, reverse, maskInput)
        self.outputs["non_cond_frame_outputs"].pop(k, None)
        self.outputs["cond_frame_outputs"][k] = compact
        self.conditioning[k] = Prompts(boxXyxy=prompts.boxXyxy, pointsXy=prompts.pointsXy,
                                       pointLabels=prompts.pointLabels)
        self.tracked[k] = reverse
        return result

    def conditionMask(self, k: int, embedding: SliceEmbedding, maskImage) -> DecodeResult:
        """Make slice k a conditioning slice from a mask (bool (H, W) slice image); returns its result.

        As the video predictor's add_new_mask: the mask is resized to the model's
        input size (bilinear, antialiased, >= 0.5) and taken as the slice's output
        (SAM2Base._use_mask_as_output: no decoder, predicted IoU 1); its memory is
        encoded from the low-resolution output, binarised, as
        propagate_in_video_preflight encodes a prompted frame. Raises InputError
        for a mask that does not fit the slice.
        """
        import torch.nn.functional as F

        torch = self.engine._torch
        mask = np.asarray(maskImage, dtype=bool)
        if mask.shape != tuple(embedding.imageSize):
            raise InputError(f"The mask of slice {k} has shape {mask.shape}; the slice image is "
                             f"{tuple(embedding.imageSize)}.")
        size = int(self.engine.model.image_size)
        maskInputs = torch.as_tensor(mask, device=self.engine.device).float()[None, None]
        if maskInputs.shape[-2:] != (size, size):
            maskInputs = F.interpolate(maskInputs, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True)
            maskInputs = (maskInputs >= 0.5).float()
        reverse = self.tracked.get(k, False)
        result, compact = self._step(k, embedding, None, k not in self.tracked, reverse, None, maskInputs)
        self.outputs["non_cond_frame_outputs"].pop(k, None)
        self.outputs["cond_frame_outputs"][k] = compact
        self.conditioning[k] = Prompts()  # no box or clicks: a mask (its logits are in lowResLogits)
        self.tracked[k] = reverse
        return result

    def track(self, k: int, embedding: SliceEmbedding, reverse: bool) -> DecodeResult:
        """Segment slice k from memory alone (no prompts); ``reverse``: the walk goes towards lower k.

        Raises InputError when no slice has been conditioned yet.
        """
        if not self.outputs["cond_frame_outputs"]:
            raise InputError("No conditioning slice yet: prompt a slice (box or points) before propagating.")
        if k in self.outputs["cond_frame_outputs"]:
            raise InputError(f"Slice {k} is a conditioning slice: its mask comes from its prompts, not from tracking.")
        result, compact = self._step(k, embedding, None, False, bool(reverse), None)
        memory = self.outputs["non_cond_frame_outputs"]
        memory.pop(k, None)
        memory[k] = compact
        while len(memory) > self.maxMemoryFrames:
            memory.pop(next(iter(memory)))  # the oldest tracked slice: beyond what SAM 2 looks back at
        self.tracked[k] = bool(reverse)
        return result

    def copy(self) -> "Sam2MemorySession":
        """A session with the same memory that can change without changing this one (tensors are shared, never
        modified in place), so a correction that is cancelled leaves the result it started from as it was."""
        twin = Sam2MemorySession(self.engine, self.sliceCount, self.maxMemoryFrames)
        twin.outputs = {name: dict(outputs) for name, outputs in self.outputs.items()}
        twin.conditioning, twin.tracked = dict(self.conditioning), dict(self.tracked)
        twin.lowResLogits = dict(self.lowResLogits)
        twin._device, twin._maskmemPos = self._device, self._maskmemPos
        return twin

    def forget(self, k: int) -> None:
        """Drop what tracking slice k left (a slice a stop rule rejected); conditioning slices stay."""
        if k in self.outputs["cond_frame_outputs"]:
            return
        self.outputs["non_cond_frame_outputs"].pop(k, None)
        self.tracked.pop(k, None)
        self.lowResLogits.pop(k, None)

    def startWalk(self) -> None:
        """Forget tracked memories: the next walk starts from the conditioning slices alone."""
        self.outputs["non_cond_frame_outputs"].clear()

    @property
    def memorySlices(self) -> list:
        """Slices whose memory the next step can attend to: conditioning ones, then tracked ones (sorted)."""
        return sorted(self.outputs["cond_frame_outputs"]) + sorted(self.outputs["non_cond_frame_outputs"])

    @property
    def nbytes(self) -> int:
        """Bytes held by the memory bank and the kept low-resolution logits."""
        total = sum(t.numel() * t.element_size() for t in self.lowResLogits.values())
        for outputs in self.outputs.values():
            for out in outputs.values():
                total += sum(out[name].numel() * out[name].element_size()
                             for name in ("maskmem_features", "obj_ptr", "pred_masks"))
        return int(total)

    # ------------------------------------------------------------------ internals

    def _step(self, k, embedding, pointInputs, isInitial, reverse, maskInput, maskInputs=None):
        """One SAM 2 track step on slice k (memory attention, decoder, memory encoder); (DecodeResult, compact output).

        maskInput: earlier logits for the decoder (a correction); maskInputs: a
        (1, 1, S, S) mask taken as the output (a mask-conditioned slice).
        """
        import torch.nn.functional as F

        engine, torch = self.engine, self.engine._torch
        if not 0 <= k < self.sliceCount:
            raise InputError(f"Slice {k} is outside the volume (0..{self.sliceCount - 1}).")
        engine.checkEmbedding(embedding)
        self._followDevice()
        model = engine.model
        levels = engine.featureLevels(embedding)
        vision = [level.flatten(2).permute(2, 0, 1) for level in levels]
        sizes = [tuple(level.shape[-2:]) for level in levels]
        position = engine.constant(("visionPos", sizes[-1]), lambda: model.image_encoder.neck.position_encoding(
            levels[-1]).flatten(2).permute(2, 0, 1))
        with torch.no_grad(), engine.autocast():
            current, samOutputs, _, _ = model._track_step(
                k, isInitial, vision, [None, None, position], sizes, pointInputs, maskInputs, self.outputs,
                self.sliceCount, reverse, maskInput)
            _, _, ious, lowRes, highRes, objectPointer, objectScore = samOutputs
            if maskInputs is not None:
                # The video predictor encodes a mask frame's memory from its low-res output, upsampled
                # (propagate_in_video_preflight), not from the +-10 mask _use_mask_as_output returns.
                highRes = F.interpolate(lowRes.float(), size=highRes.shape[-2:], mode="bilinear", align_corners=False)
            # is_mask_from_pts: a prompted slice's memory is binarised (binarize_mask_from_pts_for_mem_enc).
            fromPrompts = pointInputs is not None or maskInputs is not None
            current["maskmem_features"], current["maskmem_pos_enc"] = model._encode_new_memory(
                vision, sizes, highRes, objectScore, fromPrompts)
        self.steps += 1
        if self._maskmemPos is None:
            self._maskmemPos = current["maskmem_pos_enc"]
        compact = {
            # bf16 halves the bank, as sam2's video predictor stores it
            "maskmem_features": current["maskmem_features"].to(torch.bfloat16),
            "maskmem_pos_enc": self._maskmemPos, "pred_masks": lowRes.float(), "obj_ptr": objectPointer,
            "object_score_logits": objectScore,
        }
        self.lowResLogits[k] = lowRes.detach().to("cpu", torch.float16)
        score = float(ious.float().max()) if bool((objectScore > 0).all()) else 0.0
        return engine.resultFromLogits(lowRes, score, embedding), compact

    def _followDevice(self) -> None:
        """Move the bank to the engine's device after an out-of-memory fallback moved the engine."""
        device = self.engine.device
        if device == self._device:
            return
        for outputs in self.outputs.values():
            for out in outputs.values():
                for name, value in list(out.items()):
                    if isinstance(value, list):
                        out[name] = [item.to(device) for item in value]
                    elif hasattr(value, "to"):
                        out[name] = value.to(device)
        if self._maskmemPos is not None:
            self._maskmemPos = [item.to(device) for item in self._maskmemPos]
        self._device = device


def hasMemoryPropagation(engine) -> bool:
    """True when ``engine`` offers SAM 2-style memory propagation (startMemorySession)."""
    return callable(getattr(engine, "startMemorySession", None))

