"""Box prompts decoded by replaying a captured CUDA graph of segment-anything's prompt encoder and mask decoder.

On a GPU one decode is a few hundred small kernels whose launches from Python
cost more than their arithmetic (about 5.5 ms per decode on an H100, a quarter
of a bf16 ViT-B encoder pass per slice), which is what propagation pays on
every slice. A captured graph launches them all at once. The graph computes
exactly what the stock modules compute (same kernels, same order).

Only box prompts, with or without a previous low-resolution mask and without
points, are captured: that is every propagation step and every box-only
click. Point prompts index with boolean masks inside segment-anything's
prompt encoder, which needs the host and cannot be captured; they take the
stock path. One graph per (batch size, previous mask or not), captured at
first use. CUDA only; torch is imported at first use.
"""

import threading
from collections import OrderedDict

#: Graphs kept per engine (each holds its own static buffers, a few MB).
MAX_GRAPHS = 8


class CudaGraphDecoder:
    """Replays captured decoder graphs for box prompts on one CUDA device.

    model: a segment_anything Sam on that device; densePe: the prompt
    encoder's dense positional encoding (1, C, h, w) on that device.
    captureLock: held while a graph is captured; the engine holds the same lock
    around its encoder batches, so a prefetch worker never launches work on
    the device in the middle of a capture.
    """

    def __init__(self, model, densePe, captureLock=None):
        self.model = model
        self.densePe = densePe
        self._captureLock = captureLock if captureLock is not None else threading.Lock()
        self._graphs = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def supports(points, boxes, multimask: bool) -> bool:
        """True for prompts this decoder replays: boxes, no points, one mask per object."""
        return points is None and boxes is not None and not multimask

    def predict(self, features, boxes, masks):
        """(low-res logits (B, 1, h, w), IoU (B, 1)) for B boxes on one slice.

        features: (C, h, w) embedding on the device (any float dtype); boxes:
        (B, 4) float in the model's input frame; masks: (B, 1, H, W) previous
        low-resolution logits or None. The outputs are new tensors.
        """
        key = (int(boxes.shape[0]), masks is not None)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                with self._captureLock:
                    entry = self._capture(features, boxes, masks)
                self._graphs[key] = entry
                while len(self._graphs) > MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            entry["features"].copy_(features)
            entry["boxes"].copy_(boxes)
            if masks is not None:
                entry["masks"].copy_(masks)
            entry["graph"].replay()
            return entry["lowRes"].clone(), entry["iou"].clone()

    def _decode(self, static: dict):
        """The stock prompt encoder + mask decoder on the static buffers."""
        sparse, dense = self.model.prompt_encoder(points=None, boxes=static["boxes"], masks=static.get("masks"))
        return self.model.mask_decoder(
            image_embeddings=static["features"].float()[None], image_pe=self.densePe,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)

    def _capture(self, features, boxes, masks) -> dict:
        """Warm up on a side stream, then capture one decode into a graph with static inputs and outputs."""
        import torch

        static = {"features": features.clone(), "boxes": boxes.clone()}
        if masks is not None:
            static["masks"] = masks.clone()
        side = torch.cuda.Stream(device=features.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # lets cuDNN/cuBLAS pick and allocate their workspaces outside the capture
                self._decode(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls that other threads make meanwhile (allocations, syncs) must not
        # invalidate this capture, nor this capture theirs
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            lowRes, iou = self._decode(static)
        static.update(graph=graph, lowRes=lowRes, iou=iou)
        return static
