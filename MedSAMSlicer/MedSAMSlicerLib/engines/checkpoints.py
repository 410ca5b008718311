"""Read SAM-family checkpoints, recognise their architecture, build the model with segment-anything.

A checkpoint is a torch-saved state dict, bare or wrapped as {"model": state_dict}
(MedSAM's training scripts write the latter). Tensors saved on a GPU load on a
CPU (map_location="cpu"). The architecture is read from the weights' shapes, so
a wrong choice gives an error naming the architecture the file looks like.
torch and segment_anything are imported here at first use only.
"""

import logging
import re
import zipfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping, Optional, Tuple

from ..core.errors import CheckpointError, DependencyError

logger = logging.getLogger(__name__)

#: (embed dim, depth, heads, global attention blocks) of segment-anything's three builders.
STANDARD_ARCHITECTURES = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}
ENCODER_KEY = "image_encoder.patch_embed.proj.weight"
DECODER_HEADS = 8  # not visible in the weights; every SAM model uses 8


@dataclass(frozen=True)
class ArchitectureInfo:
    """What a state dict says about the model that produced it.

    name: "vit_b", "vit_l", "vit_h" (segment-anything's builders fit exactly) or
    "custom" (other dims; built from the fields below).
    """

    name: str
    embedDim: int
    depth: int
    numHeads: int
    patchSize: int
    imgSize: int
    windowSize: int
    globalAttnIndexes: Tuple[int, ...]
    useRelPos: bool
    mlpRatio: float
    promptEmbedDim: int
    maskInChans: int
    decoderDepth: int
    decoderMlpDim: int
    numMultimaskOutputs: int
    iouHeadDepth: int
    iouHeadHiddenDim: int
    extra: dict = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """A short human description, e.g. "vit_b (embed dim 768, 12 blocks)"."""
        return f"{self.name} (embed dim {self.embedDim}, {self.depth} blocks, patch {self.patchSize}, input {self.imgSize})"


def requireTorch():
    """The torch module; DependencyError saying how to install it when it is missing."""
    try:
        import torch
    except ImportError:
        raise DependencyError("PyTorch is not installed. Install it (in Slicer: the PyTorch extension, "
                              "or the module's 'Install dependencies' button) and try again.") from None
    return torch


def _blockIndexes(stateDict: Mapping, prefix: str) -> list:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for key in stateDict for m in [pattern.match(key)] if m})


def _shape(stateDict: Mapping, key: str) -> Optional[tuple]:
    value = stateDict.get(key)
    return tuple(value.shape) if value is not None and hasattr(value, "shape") else None


def detectArchitecture(stateDict: Mapping) -> ArchitectureInfo:
    """Recognise a SAM image encoder / prompt encoder / mask decoder from tensor shapes.

    Returns ArchitectureInfo; name is "vit_b"/"vit_l"/"vit_h" when the dims are
    exactly those of segment-anything's builders, else "custom" with the dims
    found. Raises CheckpointError when the dict is not a SAM state dict.
    """
    patch = _shape(stateDict, ENCODER_KEY)
    posEmbed = _shape(stateDict, "image_encoder.pos_embed")
    neck = _shape(stateDict, "image_encoder.neck.0.weight")
    blocks = _blockIndexes(stateDict, "image_encoder.blocks.")
    decoderLayers = _blockIndexes(stateDict, "mask_decoder.transformer.layers.")
    iouLayers = _blockIndexes(stateDict, "mask_decoder.iou_prediction_head.layers.")
    if patch is None or neck is None or not blocks or not decoderLayers:
        raise CheckpointError("These weights are not a Segment Anything (SAM/MedSAM) model: no image encoder "
                              "or mask decoder found. Choose a SAM-family checkpoint (.pth).")
    embedDim, patchSize = patch[0], patch[-1]
    gridSize = posEmbed[1] if posEmbed is not None else 1024 // patchSize
    relPosH = [_shape(stateDict, f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in blocks]
    useRelPos = all(shape is not None for shape in relPosH)
    if useRelPos:
        headDim = relPosH[0][1]
        spans = [(shape[0] + 1) // 2 for shape in relPosH]
        globalAttnIndexes = tuple(i for i, span in zip(blocks, spans) if span == gridSize)
        windowed = [span for span in spans if span != gridSize]
        windowSize = windowed[0] if windowed else 0
    else:
        headDim, globalAttnIndexes, windowSize = 64, tuple(blocks), 0
    mlpHidden = _shape(stateDict, "image_encoder.blocks.0.mlp.lin1.weight")
    maskDown = _shape(stateDict, "prompt_encoder.mask_downscaling.3.weight")
    decoderMlp = _shape(stateDict, "mask_decoder.transformer.layers.0.mlp.lin1.weight")
    maskTokens = _shape(stateDict, "mask_decoder.mask_tokens.weight")
    iouHidden = _shape(stateDict, "mask_decoder.iou_prediction_head.layers.0.weight")
    info = dict(
        embedDim=embedDim, depth=len(blocks), numHeads=max(1, embedDim // headDim), patchSize=patchSize,
        imgSize=gridSize * patchSize, windowSize=windowSize, globalAttnIndexes=globalAttnIndexes,
        useRelPos=useRelPos, mlpRatio=(mlpHidden[0] / embedDim) if mlpHidden else 4.0, promptEmbedDim=neck[0],
        maskInChans=maskDown[0] if maskDown else 16, decoderDepth=len(decoderLayers),
        decoderMlpDim=decoderMlp[0] if decoderMlp else 2048,
        numMultimaskOutputs=(maskTokens[0] - 1) if maskTokens else 3,
        iouHeadDepth=len(iouLayers) or 3, iouHeadHiddenDim=iouHidden[0] if iouHidden else 256,
    )
    return ArchitectureInfo(name=_standardName(info), **info)


def _standardName(info: dict) -> str:
    """The builder name whose every dim matches, else "custom"."""
    for name, (embedDim, depth, heads, globalIndexes) in STANDARD_ARCHITECTURES.items():
        if (info["embedDim"], info["depth"], info["numHeads"]) == (embedDim, depth, heads) \
                and info["globalAttnIndexes"] == globalIndexes and info["windowSize"] == 14 \
                and (info["patchSize"], info["imgSize"], info["promptEmbedDim"]) == (16, 1024, 256) \
                and info["decoderDepth"] == 2 and info["decoderMlpDim"] == 2048 and info["maskInChans"] == 16 \
                and info["iouHeadHiddenDim"] == 256 and info["mlpRatio"] == 4.0:
            return name
    return "custom"


def lookalikeName(info: ArchitectureInfo) -> str:
    """The standard architecture a (possibly custom) one is closest to, by embed dim, for messages."""
    for name, (embedDim, depth, _, _) in STANDARD_ARCHITECTURES.items():
        if info.embedDim == embedDim and info.depth == depth:
            return name
    return info.name


def buildSamModel(info: ArchitectureInfo):
    """An untrained segment_anything Sam with exactly the dims of ``info`` (eval mode, on the CPU)."""
    torch = requireTorch()
    try:
        from segment_anything import sam_model_registry
        from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    except ImportError:
        raise DependencyError("The segment-anything package is not installed. Install it (pip install "
                              "segment-anything, or the module's 'Install dependencies' button) and try again.") from None
    if info.name in STANDARD_ARCHITECTURES:
        return sam_model_registry[info.name](checkpoint=None).eval()
    grid = info.imgSize // info.patchSize
    model = Sam(
        image_encoder=ImageEncoderViT(
            img_size=info.imgSize, patch_size=info.patchSize, embed_dim=info.embedDim, depth=info.depth,
            num_heads=info.numHeads, mlp_ratio=info.mlpRatio, out_chans=info.promptEmbedDim, qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=info.useRelPos,
            window_size=info.windowSize, global_attn_indexes=info.globalAttnIndexes,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=info.promptEmbedDim, image_embedding_size=(grid, grid),
            input_image_size=(info.imgSize, info.imgSize), mask_in_chans=info.maskInChans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=info.numMultimaskOutputs,
            transformer=TwoWayTransformer(depth=info.decoderDepth, embedding_dim=info.promptEmbedDim,
                                          mlp_dim=info.decoderMlpDim, num_heads=DECODER_HEADS),
            transformer_dim=info.promptEmbedDim, iou_head_depth=info.iouHeadDepth,
            iou_head_hidden_dim=info.iouHeadHiddenDim,
        ),
    )
    return model.eval()


def readStateDict(path) -> dict:
    """Load a checkpoint file's state dict on the CPU (bare, {"model": ...} or {"state_dict": ...}).

    Uses torch.load(map_location="cpu", weights_only=True): no code in the file
    is run. Strips a DataParallel "module." prefix. Raises CheckpointError for a
    missing, unreadable, truncated or non-checkpoint file.
    """
    torch = requireTorch()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}. Check the path, or download the model again.")
    size = path.stat().st_size
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, zip errors...
        raise CheckpointError(_unreadableMessage(path, size, exc)) from None
    stateDict = _unwrap(loaded)
    if stateDict is None:
        raise CheckpointError(f"{path.name} was read but holds no model weights (a {type(loaded).__name__}, "
                              "not a state dict). Choose the model's .pth checkpoint file.")
    if stateDict and all(key.startswith("module.") for key in stateDict):
        stateDict = {key[len("module."):]: value for key, value in stateDict.items()}
    return stateDict


def _unwrap(loaded) -> Optional[dict]:
    if not isinstance(loaded, Mapping):
        return None
    for wrapper in ("model", "state_dict"):
        inner = loaded.get(wrapper)
        if isinstance(inner, Mapping) and any(hasattr(v, "shape") for v in inner.values()):
            return dict(inner)
    if any(hasattr(value, "shape") for value in loaded.values()):
        return {key: value for key, value in loaded.items() if hasattr(value, "shape")}
    return None


def _unreadableMessage(path: Path, size: int, exc: Exception) -> str:
    text = str(exc)
    if "Weights only load failed" in text:
        return (f"{path.name} contains Python objects besides weights, which are not loaded for safety. "
                "Re-save it as a plain state dict (torch.save(model.state_dict(), path)) and try again.")
    truncated = isinstance(exc, (EOFError, zipfile.BadZipFile)) or any(
        marker in text for marker in ("failed finding central directory", "file read failed", "Ran out of input",
                                      "unexpected EOF", "failed reading"))
    if truncated:
        return (f"{path.name} is incomplete or corrupt ({size} bytes; the download was probably interrupted). "
                "Delete it and download the model again.")
    return (f"{path.name} is not a PyTorch checkpoint that can be read ({type(exc).__name__}: {text[:160]}). "
            "Choose the model's .pth file; if it is one, download it again.")


def loadSamModel(path, architecture: Optional[str] = None):
    """Build a segment_anything Sam and load a checkpoint's weights into it, on the CPU.

    path: .pth file (bare or {"model": ...}). architecture: "vit_b"/"vit_l"/"vit_h"
    to insist on one, or None/"auto"/"custom" to take what the weights say.
    Returns (model in eval mode on the CPU, architecture name: "vit_b", ..., or "custom").
    Raises CheckpointError when the file cannot be read, is not SAM, or does not
    fit the requested architecture (the message names the one it looks like).
    """
    stateDict = readStateDict(path)
    info = detectArchitecture(stateDict)
    wanted = (architecture or "auto").lower()
    if wanted not in ("auto", "custom") and wanted != info.name:
        looksLike = lookalikeName(info)
        shape = info.describe() if looksLike == info.name else f"{looksLike} ({info.describe()})"
        raise CheckpointError(
            f"{Path(path).name} does not fit the {wanted} architecture: its weights look like {shape}. Choose {looksLike if looksLike != 'custom' else 'the custom model'} "
            "for this file, or pick the checkpoint that matches the model.")
    model = buildSamModel(info)
    try:
        model.load_state_dict(stateDict, strict=True)
    except RuntimeError:
        raise CheckpointError(f"{Path(path).name} looks like {info.describe()} but its tensors do not fit that model: "
                              f"{describeStateDictMismatch(model.state_dict(), stateDict)}. The file may be from "
                              "another SAM variant or damaged; choose a SAM/MedSAM ViT checkpoint.") from None
    logger.info("Loaded %s as %s", path, info.describe())
    return model, info.name


def describeStateDictMismatch(expected: Mapping, given: Mapping, limit: int = 3) -> str:
    """Why ``given`` (a checkpoint's tensors) does not load into a model whose state dict is ``expected``.

    Names the first ``limit`` missing, unexpected and wrong-shape tensors (in the
    model's order; unexpected ones in the file's), with counts of the rest, e.g.
    "missing: mask_decoder.iou_token.weight; wrong shape: a.weight is (1, 16) in
    the file, (1, 32) in the model". torch's own message lists every tensor on
    one line without saying which kind matters.
    """
    def listed(names):
        shown = ", ".join(names[:limit])
        return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")

    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    wrongShape = [f"{key} is {tuple(given[key].shape)} in the file, {tuple(expected[key].shape)} in the model"
                  for key in expected if key in given and tuple(given[key].shape) != tuple(expected[key].shape)]
    parts = [f"{kind}: {listed(names)}" for kind, names in
             (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrongShape)) if names]
    return "; ".join(parts) or "every tensor name and shape matches (a dtype the model cannot take?)"
