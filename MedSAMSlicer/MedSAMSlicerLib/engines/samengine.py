"""SamEngine: MedSAM and SAM checkpoints behind the Engine interface.

Two preprocessing recipes, each exactly the one its weights were trained with:

- "medsam" (MedSAM_Inference.py): the slice is resized straight to 1024x1024
  (cubic, aspect ratio not kept), min-max scaled to [0, 1] and given to the
  image encoder directly (no pixel mean/std). Prompts are scaled into that
  square (x by 1024/W, y by 1024/H). Mask = sigmoid(low-res logits) resized
  bilinearly to the slice, > 0.5.
- "sam" (segment_anything.SamPredictor): the slice as 0-255 RGB, longest side
  resized to 1024 (ResizeLongestSide), pixel mean/std, zero-padded to a square;
  prompts via the same transform; masks via Sam.postprocess_masks, > 0.

Frames: images, prompts and masks are in slice pixels (x = column, y = row).
torch and segment_anything are imported at first use; never imports slicer.
"""

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .devices import autocastDtype, autocastContext, chooseDevice
from .base import DecodeResult, Prompts, SliceEmbedding
from .torchengine import TorchEngine, asRgb, checkPromptsOnImage, checkpointDigest  # noqa: F401 (re-exported)
from ..core.errors import InputError, PromptError

logger = logging.getLogger(__name__)

SAM_RECIPES = ("medsam", "sam")


@dataclass
class _PreparedPrompts:
    """One object's prompts in the model's 1024 input frame, as numpy arrays."""

    coordsModel: np.ndarray  # (N, 2) float32
    labels: np.ndarray  # (N,) int32
    boxModel: Optional[np.ndarray]  # (4,) float32 or None
    maskInput: Optional[np.ndarray]  # (h, w) float32 or None
    multimask: bool

    @property
    def groupKey(self) -> tuple:
        """Prompts with equal keys can share one decoder call (same tensor shapes)."""
        return (self.boxModel is not None, len(self.coordsModel), self.maskInput is not None, self.multimask)


class SamEngine(TorchEngine):
    """A SAM-family checkpoint (MedSAM, SAM ViT-B/L/H, custom) with its preprocessing recipe.

    checkpointPath: .pth file (bare state dict or {"model": ...}); or pass an
    already built segment_anything Sam as ``model`` (benchmarks). recipe:
    "medsam" or "sam". architecture: "vit_b"/"vit_l"/"vit_h" to insist on one,
    None to detect. device: "auto", "cuda", "mps", "cpu". modelId: full cache
    identity; default "<modelName or recipe_architecture>:<first 12 hex of the
    file's SHA-256>", so two checkpoints never share cache entries. batchSize:
    slices per encoder pass (default: from free GPU memory; 1 on CPU).
    Embeddings hold fp16 (C, 64, 64) features on the engine's device; encode
    is TorchEngine's (batched, out-of-memory safe). fastDecoding: on a CPU,
    decode through fastdecoder.FastMaskDecoder (same model and weights, exact
    up to float rounding, 2-3x faster on a CPU) and swap the model's kernel-2
    transposed convolutions and LayerNorm2d for
    their faster equivalents; False keeps segment-anything's modules as they
    are. On a GPU the stock decoder is used: its few large kernels beat the
    fast path's many small ones there (6.3 vs 14.4 ms per click on an H100,
    docs/benchmarks.md); after an out-of-memory fallback to the CPU the fast
    decoder is switched on. cudaGraphs: on CUDA, decode box prompts by
    replaying a captured graph of the stock decoder (cudagraphdecoder.py),
    which removes the per-kernel launch cost that dominates a GPU decode.
    Raises CheckpointError (bad file), InputError (bad recipe/device).
    """

    def __init__(self, checkpointPath=None, recipe: str = "medsam", architecture: Optional[str] = None,
                 device: str = "auto", modelId: Optional[str] = None, *, model=None, modelName: Optional[str] = None,
                 batchSize: Optional[int] = None, displayName: Optional[str] = None, mixedPrecision: bool = True,
                 fastDecoding: bool = True, cudaGraphs: bool = True):
        from .checkpoints import detectArchitecture, loadSamModel, requireTorch

        torch = requireTorch()  # DependencyError with advice when PyTorch is missing
        if recipe not in SAM_RECIPES:
            raise InputError(f"Unknown preprocessing recipe {recipe!r}; choose one of {', '.join(SAM_RECIPES)}.")
        if (model is None) == (checkpointPath is None):
            raise InputError("Give a SamEngine either a checkpoint file or a built model, not both or neither.")
        self.recipe = recipe
        self._device = chooseDevice(device)
        if model is None:
            model, self.architecture = loadSamModel(checkpointPath, architecture)
            identity = checkpointDigest(checkpointPath)[:12]
        else:
            self.architecture = architecture or detectArchitecture(model.state_dict()).name
            identity = f"mem{id(model):x}"
        self.checkpointPath = Path(checkpointPath) if checkpointPath is not None else None
        self.model = self._placeModel(model.eval())
        self.modelId = modelId or f"{modelName or f'{recipe}_{self.architecture}'}:{identity}"
        self.displayName = displayName or f"{'MedSAM' if recipe == 'medsam' else 'SAM'} ({self.architecture})"
        self._initEncoding(batchSize)
        self.mixedPrecision = mixedPrecision
        self._streams: dict = {}  # CUDA streams by purpose ("encode", "decode"), made at first use
        self._densePe = None  # cached by _densePositionalEncoding; reset when the model changes device
        self.fastDecoding = fastDecoding
        self.cudaGraphs = cudaGraphs
        self._graphDecoder = None  # made at the first box decode on CUDA
        self._deviceWorkLock = threading.Lock()  # encoder batches vs. CUDA graph captures
        self._fastDecoder = self._makeFastDecoder() if fastDecoding and self._device == "cpu" else None
        self.imgSize = int(self.model.image_encoder.img_size)
        self.maskInputSize = tuple(self.model.prompt_encoder.mask_input_size)
        self._torch = torch

    def _makeFastDecoder(self):
        """Swap in the exact fast layers and build the fast decoder; None for a model it does not know."""
        from .fastdecoder import FastMaskDecoder, supportsFastDecoding
        from .fastlayers import swapFastLayers

        if not supportsFastDecoding(self.model):
            logger.info("Model %s uses the stock segment-anything decoder (no fast path for it).", self.modelId)
            return None
        swapFastLayers(self.model)
        return FastMaskDecoder(self.model)

    # ----------------------------------------------------------------- encode

    def _estimatedBytesPerSlice(self) -> int:
        """Peak encoder memory per slice: a global attention block's scores dominate (heads x tokens^2, held as
        scores and scores + relative positions in the compute precision, and softmax in fp32 even under autocast)."""
        encoder = self.model.image_encoder
        grid = self.imgSize // encoder.patch_embed.proj.kernel_size[0]
        heads = encoder.blocks[0].attn.num_heads
        element = 2 if (self.mixedPrecision and autocastDtype(self._device) is not None) else 4
        embedDim = encoder.patch_embed.proj.out_channels
        return heads * grid ** 4 * (2 * element + 4) + 16 * grid * grid * embedDim * 4 + 3 * self.imgSize ** 2 * 4

    def _afterFallback(self) -> None:
        """After an out-of-memory fallback to the CPU: drop GPU-bound caches, decode with the fast decoder."""
        self._densePe = None
        self._graphDecoder = None
        if self._fastDecoder is not None:
            self._fastDecoder.reset()
        elif self.fastDecoding:
            self._fastDecoder = self._makeFastDecoder()

    def _cudaStream(self, purpose: str):
        """A stream context for "encode" or "decode" work on CUDA; a no-op context elsewhere.

        Encoder batches run on their own stream and decodes on a higher-priority
        one, so a click or a propagation step never queues behind a batch of
        encoder kernels that a prefetch worker launched (with one stream, a
        decode waited for the whole batch: measured in docs/benchmarks.md).
        """
        if not self._device.startswith("cuda"):
            return contextlib.nullcontext()
        stream = self._streams.get(purpose)
        if stream is None:
            stream = self._torch.cuda.Stream(device=self._device, priority=-1 if purpose == "decode" else 0)
            self._streams[purpose] = stream
        return self._torch.cuda.stream(stream)

    def _encodeBatch(self, images: Sequence[np.ndarray], sizes: Sequence[tuple]) -> list:
        torch = self._torch
        with self._deviceWorkLock, torch.no_grad(), self._cudaStream("encode"):
            prepared = [self._modelInput(image) for image in images]
            inputs = torch.stack([tensor for tensor, _ in prepared])
            with autocastContext(self._device, self.mixedPrecision):
                features = self.model.image_encoder(inputs)
            features = features.to(torch.float16)
            # clone: a view would keep the whole batch's storage alive in the cache
            features = [features[index].clone() for index in range(len(images))]
            if self._device.startswith("cuda"):
                # the features are read on the decode stream: finish them before anyone sees them
                torch.cuda.current_stream().synchronize()
        return [SliceEmbedding(features=feature, imageSize=tuple(size), nbytes=feature.numel() * feature.element_size(),
                               extra={"recipe": self.recipe, "inputSize": inputSize, "modelId": self.modelId})
                for feature, size, (_, inputSize) in zip(features, sizes, prepared)]

    def _modelInput(self, image: np.ndarray):
        """(3, S, S) float32 tensor on the device for one image, and the unpadded input size (h, w)."""
        rgb = asRgb(image)
        if self.recipe == "medsam":
            return self._medsamInput(rgb), (self.imgSize, self.imgSize)
        return self._samInput(rgb)

    def _medsamInput(self, rgb: np.ndarray):
        torch = self._torch
        import torch.nn.functional as F

        tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(self._device)
        height, width = rgb.shape[:2]
        size = self.imgSize
        if (height, width) != (size, size):
            tensor = F.interpolate(tensor, size=(size, size), mode="bicubic", align_corners=False,
                                   antialias=height > size or width > size)
        low, high = tensor.amin(), tensor.amax()
        return ((tensor - low) / torch.clamp(high - low, min=1e-8))[0]

    def _samInput(self, rgb: np.ndarray):
        from segment_anything.utils.transforms import ResizeLongestSide

        torch = self._torch
        image8 = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
        resized = ResizeLongestSide(self.imgSize).apply_image(image8)
        tensor = torch.as_tensor(resized, device=self._device).permute(2, 0, 1).contiguous()[None].float()
        return self.model.preprocess(tensor)[0], tuple(resized.shape[:2])

    # ----------------------------------------------------------------- decode

    def decode(self, embedding: SliceEmbedding, prompts: Prompts) -> DecodeResult:
        """One object's mask (bool (H, W), slice pixels), predicted IoU and low-res logits (h, w).

        A single point without box or previous mask is ambiguous: the decoder
        returns 3 candidates and the one with the highest predicted IoU is
        kept. Raises PromptError for empty prompts, prompts entirely off the
        image, or a previous mask of the wrong size.
        """
        return self.decodeMany(embedding, [prompts])[0]

    def decodeMany(self, embedding: SliceEmbedding, promptsList: Sequence[Prompts]) -> list:
        """Decode several objects on one slice; objects whose prompts have the same form
        (box or not, number of points, previous mask or not) share one decoder call."""
        torch = self._torch
        self._checkEmbedding(embedding)
        prepared = [self._preparePrompts(prompts, embedding) for prompts in promptsList]
        groups: dict = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.groupKey, []).append(index)
        results: list = [None] * len(prepared)
        with torch.no_grad(), self._cudaStream("decode"):
            for indices in groups.values():
                for index, result in zip(indices, self._decodeGroup(embedding, [prepared[i] for i in indices])):
                    results[index] = result
        return results

    def _checkEmbedding(self, embedding: SliceEmbedding) -> None:
        madeBy = embedding.extra.get("modelId")
        if madeBy is not None and madeBy != self.modelId:
            raise InputError(f"This slice was encoded by another model ({madeBy}), not {self.modelId}; "
                             "encode it again with the current model.")

    def _preparePrompts(self, prompts: Prompts, embedding: SliceEmbedding) -> _PreparedPrompts:
        height, width = embedding.imageSize
        checkPromptsOnImage(prompts, height, width)
        points = prompts.pointsXy
        scale = self._promptScale(height, width)
        box = None
        if prompts.boxXyxy is not None:
            box = (np.asarray(prompts.boxXyxy, np.float64).reshape(2, 2) * scale).reshape(4).astype(np.float32)
        maskInput = None
        if prompts.previousLowResLogits is not None:
            maskInput = np.asarray(prompts.previousLowResLogits, np.float32)
            if maskInput.ndim > 2 and all(extent == 1 for extent in maskInput.shape[:-2]):
                maskInput = maskInput.reshape(maskInput.shape[-2:])  # accept (1, h, w) and (1, 1, h, w)
            if maskInput.shape != self.maskInputSize:
                raise PromptError(f"The previous mask has shape {np.shape(prompts.previousLowResLogits)}; this model "
                                  f"needs {self.maskInputSize}. Pass the lowResLogits of a result of the same model.")
        return _PreparedPrompts(
            coordsModel=(points.astype(np.float64) * scale).astype(np.float32), labels=prompts.pointLabels,
            boxModel=box, maskInput=maskInput, multimask=prompts.isAmbiguous and maskInput is None)

    def _promptScale(self, height: int, width: int) -> np.ndarray:
        """(sx, sy) mapping slice pixels to the model's input frame."""
        if self.recipe == "medsam":
            return np.array([self.imgSize / width, self.imgSize / height])
        from segment_anything.utils.transforms import ResizeLongestSide

        newHeight, newWidth = ResizeLongestSide.get_preprocess_shape(height, width, self.imgSize)
        return np.array([newWidth / width, newHeight / height])

    def _decodeGroup(self, embedding: SliceEmbedding, group: list) -> list:
        torch = self._torch
        first, device = group[0], self._device
        points = None
        if len(first.coordsModel):
            points = (torch.as_tensor(np.stack([p.coordsModel for p in group]), dtype=torch.float, device=device),
                      torch.as_tensor(np.stack([p.labels for p in group]), dtype=torch.int, device=device))
        boxes = None if first.boxModel is None else torch.as_tensor(
            np.stack([p.boxModel for p in group]), dtype=torch.float, device=device)
        masks = None if first.maskInput is None else torch.as_tensor(
            np.stack([p.maskInput for p in group])[:, None], dtype=torch.float, device=device)
        if self._fastDecoder is not None:
            lowRes, iou = self._fastDecoder.predict(embedding, points, boxes, masks, first.multimask)
        elif self._useGraphs(points, boxes, first.multimask):
            lowRes, iou = self._graphDecoderForDevice().predict(embedding.features, boxes, masks)
        else:
            lowRes, iou = self._stockDecode(embedding, points, boxes, masks, first.multimask)
        fullMasks = self._masksFromLowRes(lowRes, embedding).cpu().numpy()
        lowResNumpy = lowRes[:, 0].float().cpu().numpy()
        scores = iou[:, 0].float().cpu().numpy()
        return [DecodeResult(mask=fullMasks[i], score=float(np.clip(scores[i], 0.0, 1.0)), lowResLogits=lowResNumpy[i])
                for i in range(len(group))]

    def _stockDecode(self, embedding: SliceEmbedding, points, boxes, masks, multimask: bool):
        """segment-anything's PromptEncoder + MaskDecoder as they are: (low-res logits (B, 1, h, w), IoU (B, 1)),
        the candidate with the highest predicted IoU when multimask."""
        torch = self._torch
        features = embedding.features.to(self._device, torch.float32)[None]
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=masks)
        lowRes, iou = self.model.mask_decoder(
            image_embeddings=features, image_pe=self._densePositionalEncoding(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
        if multimask:
            best = iou.argmax(dim=1)
            rows = torch.arange(len(best), device=lowRes.device)
            lowRes, iou = lowRes[rows, best][:, None], iou[rows, best][:, None]
        return lowRes, iou

    def _useGraphs(self, points, boxes, multimask: bool) -> bool:
        from .cudagraphdecoder import CudaGraphDecoder

        return self.cudaGraphs and self._device.startswith("cuda") and CudaGraphDecoder.supports(
            points, boxes, multimask)

    def _graphDecoderForDevice(self):
        from .cudagraphdecoder import CudaGraphDecoder

        if self._graphDecoder is None:
            self._graphDecoder = CudaGraphDecoder(self.model, self._densePositionalEncoding(),
                                                  captureLock=self._deviceWorkLock)
        return self._graphDecoder

    def _densePositionalEncoding(self):
        """The prompt encoder's positional encoding of the embedding grid: constant, so computed once per device."""
        if self._densePe is None:
            with self._torch.no_grad():
                self._densePe = self.model.prompt_encoder.get_dense_pe()
        return self._densePe

    def _masksFromLowRes(self, lowRes, embedding: SliceEmbedding):
        """(B, 1, h, w) logits -> (B, H, W) bool masks in slice pixels, per the recipe."""
        import torch.nn.functional as F

        height, width = embedding.imageSize
        if self.recipe == "medsam":
            probability = F.interpolate(self._torch.sigmoid(lowRes), size=(height, width), mode="bilinear",
                                        align_corners=False)
            return probability[:, 0] > 0.5
        # The unpadded input size follows from the slice size (ResizeLongestSide); recomputed rather than
        # read from embedding.extra so embeddings restored from a disk cache decode the same.
        from segment_anything.utils.transforms import ResizeLongestSide

        inputSize = ResizeLongestSide.get_preprocess_shape(height, width, self.imgSize)
        logits = self.model.postprocess_masks(lowRes, inputSize, (height, width))
        return logits[:, 0] > self.model.mask_threshold

