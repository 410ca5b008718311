"""SAM 2-family checkpoints (SAM 2.1, MedSAM2): recognise them from their keys, their size from their shapes,
and build the model from the upstream ``sam2`` package's classes (PyPI sam2==1.1.0).

A SAM 2.1 checkpoint is {"model": state_dict} (MedSAM2's files too). Its keys
say it is SAM 2 (a Hiera trunk under ``image_encoder.trunk.``, a memory
attention and a memory encoder); its shapes give the Hiera size (embed dim,
blocks per stage). What the weights cannot show comes from the four official
configurations (sam2/configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml): heads,
windowed vs. global attention blocks, window sizes. The input size is not in the
weights either (MedSAM2 runs the tiny model at 512, SAM 2.1 at 1024): the recipe
chooses it.

The model is built as sam2.build_sam.build_sam2_video_predictor builds it, with
the same post-processing switches (dynamic multimask via stability, masks from
clicks binarised before the memory encoder) but without hydra: explicit
constructor calls, checked against hydra's build in Testing/test_sam2engine.py.
torch and sam2 are imported at first use only.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Tuple

from .checkpoints import _blockIndexes, _shape
from ..core.errors import CheckpointError, DependencyError

logger = logging.getLogger(__name__)

TRUNK_PREFIX = "image_encoder.trunk."
SAM2_MARKER_KEYS = ("image_encoder.trunk.patch_embed.proj.weight", "memory_attention.norm.weight")
SAM21_MARKER_KEY = "no_obj_embed_spatial"  # SAM 2.1 only (SAM 2.0 files lack it)


@dataclass(frozen=True)
class HieraSize:
    """What the weights of a Hiera trunk cannot show, per official size (from sam2's sam2.1 configs)."""

    numHeads: int
    globalAttBlocks: Tuple[int, ...]
    windowSpec: Tuple[int, ...]
    windowPosEmbedBkg: int = 7


#: (embed dim, blocks per stage) -> (name, HieraSize) of the four SAM 2.1 image encoders.
OFFICIAL_SIZES = {
    (96, (1, 2, 7, 2)): ("hiera_t", HieraSize(1, (5, 7, 9), (8, 4, 14, 7))),
    (96, (1, 2, 11, 2)): ("hiera_s", HieraSize(1, (7, 10, 13), (8, 4, 14, 7))),
    (112, (2, 3, 16, 3)): ("hiera_b+", HieraSize(2, (12, 16, 20), (8, 4, 14, 7), 14)),
    (144, (2, 6, 36, 4)): ("hiera_l", HieraSize(2, (23, 33, 43), (8, 4, 16, 8))),
}
SAM2_ARCHITECTURES = tuple(name for name, _ in OFFICIAL_SIZES.values())

#: SAM2Base switches shared by every sam2.1 config, plus what build_sam2_video_predictor adds
#: (apply_postprocessing=True); fill_hole_area needs sam2's optional CUDA extension and is left out.
SAM2_BASE_OPTIONS = dict(
    sigmoid_scale_for_mem_enc=20.0, sigmoid_bias_for_mem_enc=-10.0, use_mask_input_as_output_without_sam=True,
    directly_add_no_mem_embed=True, no_obj_embed_spatial=True, use_high_res_features_in_sam=True,
    multimask_output_in_sam=True, iou_prediction_use_sigmoid=True, use_obj_ptrs_in_encoder=True,
    add_tpos_enc_to_obj_ptrs=True, proj_tpos_enc_in_obj_ptrs=True, use_signed_tpos_enc_to_obj_ptrs=True,
    only_obj_ptrs_in_the_past_for_eval=True, pred_obj_scores=True, pred_obj_scores_mlp=True, fixed_no_obj_ptr=True,
    multimask_output_for_tracking=True, use_multimask_token_for_obj_ptr=True, multimask_min_pt_num=0,
    multimask_max_pt_num=1, use_mlp_for_obj_ptr_proj=True, compile_image_encoder=False,
    binarize_mask_from_pts_for_mem_enc=True,
    sam_mask_decoder_extra_args={"dynamic_multimask_via_stability": True, "dynamic_multimask_stability_delta": 0.05,
                                 "dynamic_multimask_stability_thresh": 0.98},
)


@dataclass(frozen=True)
class Sam2ArchitectureInfo:
    """A SAM 2 model's dimensions, read from a state dict.

    name: "hiera_t", "hiera_s", "hiera_b+", "hiera_l", or "custom" (another
    Hiera size: 1 head, global attention in the last block of stage 3, windows
    (first window, 4, 14, 7) -- the pattern of the official sizes).
    dModel: the width of the neck, decoder and memory attention (256 in every
    official model); memDim: memory channels (64); numMaskmem: memories per
    frame attended (7).
    """

    name: str
    embedDim: int
    stages: Tuple[int, ...]
    numHeads: int
    globalAttBlocks: Tuple[int, ...]
    windowSpec: Tuple[int, ...]
    windowPosEmbedBkg: int
    dModel: int
    memDim: int
    numMaskmem: int
    memoryAttentionLayers: int
    memoryFeedForward: int
    fuserLayers: int
    extra: dict = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """A short human description, e.g. "hiera_t (Hiera embed dim 96, stages 1-2-7-2)"."""
        stages = "-".join(str(s) for s in self.stages)
        return f"{self.name} (Hiera embed dim {self.embedDim}, stages {stages}, {self.memoryAttentionLayers} memory layers)"


def _requireSam2():
    """Import sam2 (DependencyError with the install line when missing)."""
    try:
        import sam2  # noqa: F401  (initialises sam2's hydra config module, as sam2 itself expects)
    except ImportError:
        raise DependencyError(
            "The sam2 package (SAM 2.1 / MedSAM2) is not installed. Install it without its CUDA extension: "
            "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0 (in Slicer: the module's "
            "'Install Python packages' button).") from None


def isSam2StateDict(stateDict: Mapping) -> bool:
    """True when the keys are a SAM 2 model's (Hiera trunk + memory attention), whatever its size."""
    return all(key in stateDict for key in SAM2_MARKER_KEYS)


def _count(stateDict: Mapping, prefix: str) -> int:
    indexes = _blockIndexes(stateDict, prefix)
    return indexes[-1] + 1 if indexes else 0


def detectSam2Architecture(stateDict: Mapping) -> Sam2ArchitectureInfo:
    """Recognise a SAM 2.1 model's size from its tensor shapes.

    Stage boundaries are the trunk blocks that change width (they carry a
    ``proj`` layer). Raises CheckpointError when the dict is not SAM 2, or is
    SAM 2.0 (its memory differs; use the SAM 2.1 file).
    """
    if not isSam2StateDict(stateDict):
        raise CheckpointError("These weights are not a SAM 2 model (no Hiera image encoder or memory attention "
                              "found). Choose a SAM 2.1 or MedSAM2 checkpoint (.pt).")
    if SAM21_MARKER_KEY not in stateDict:
        raise CheckpointError("This is a SAM 2.0 checkpoint; MedSAMSlicer runs SAM 2.1 and MedSAM2 models. "
                              "Download the SAM 2.1 file of the same size (sam2.1_hiera_*.pt).")
    embedDim = _shape(stateDict, TRUNK_PREFIX + "patch_embed.proj.weight")[0]
    blocks = _count(stateDict, TRUNK_PREFIX + "blocks.")
    starts = [0] + [i for i in range(1, blocks) if TRUNK_PREFIX + f"blocks.{i}.proj.weight" in stateDict]
    stages = tuple(b - a for a, b in zip(starts, starts[1:] + [blocks]))
    name, size = OFFICIAL_SIZES.get((embedDim, stages), ("custom", None))
    firstWindow = _shape(stateDict, TRUNK_PREFIX + "pos_embed_window")[-1]
    if size is None:
        lastOfStage3 = sum(stages[:3]) - 1 if len(stages) >= 3 else blocks - 1
        size = HieraSize(1, (lastOfStage3,), (firstWindow, 4, 14, 7)[:len(stages)])
    memProj = _shape(stateDict, "memory_encoder.out_proj.weight")
    dModel = _shape(stateDict, "memory_attention.norm.weight")[0]
    return Sam2ArchitectureInfo(
        name=name, embedDim=embedDim, stages=stages, numHeads=size.numHeads, globalAttBlocks=size.globalAttBlocks,
        windowSpec=size.windowSpec, windowPosEmbedBkg=_shape(stateDict, TRUNK_PREFIX + "pos_embed")[-1],
        dModel=dModel, memDim=memProj[0] if memProj else dModel,
        numMaskmem=_shape(stateDict, "maskmem_tpos_enc")[0],
        memoryAttentionLayers=_count(stateDict, "memory_attention.layers."),
        memoryFeedForward=_shape(stateDict, "memory_attention.layers.0.linear1.weight")[0],
        fuserLayers=_count(stateDict, "memory_encoder.fuser.layers."),
    )


def officialArchitecture(name: str) -> Sam2ArchitectureInfo:
    """The dimensions of an official SAM 2.1 model ("hiera_t", "hiera_s", "hiera_b+", "hiera_l"), as
    detectSam2Architecture reads them from its checkpoint. Raises CheckpointError for another name."""
    for (embedDim, stages), (known, size) in OFFICIAL_SIZES.items():
        if known == name:
            return Sam2ArchitectureInfo(
                name=name, embedDim=embedDim, stages=stages, numHeads=size.numHeads,
                globalAttBlocks=size.globalAttBlocks, windowSpec=size.windowSpec,
                windowPosEmbedBkg=size.windowPosEmbedBkg, dModel=256, memDim=64, numMaskmem=7,
                memoryAttentionLayers=4, memoryFeedForward=2048, fuserLayers=2)
    raise CheckpointError(f"Unknown SAM 2.1 size {name!r}; choose one of {', '.join(SAM2_ARCHITECTURES)}.")


def buildSam2Model(info: Sam2ArchitectureInfo, imageSize: int):
    """An untrained sam2 SAM2Base with exactly the dims of ``info`` for ``imageSize`` inputs (eval, CPU).

    imageSize: 1024 (SAM 2.1) or 512 (MedSAM2); a multiple of 16.
    """
    _requireSam2()
    from sam2.modeling.backbones.hieradet import Hiera
    from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
    from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
    from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
    from sam2.modeling.position_encoding import PositionEmbeddingSine
    from sam2.modeling.sam.transformer import RoPEAttention
    from sam2.modeling.sam2_base import SAM2Base

    e, d, grid = info.embedDim, info.dModel, imageSize // 16
    trunk = Hiera(embed_dim=e, num_heads=info.numHeads, stages=info.stages, global_att_blocks=info.globalAttBlocks,
                  window_spec=info.windowSpec, window_pos_embed_bkg_spatial_size=(info.windowPosEmbedBkg,) * 2)
    channels = [e * 2 ** i for i in reversed(range(len(info.stages)))]
    neck = FpnNeck(position_encoding=PositionEmbeddingSine(num_pos_feats=d, normalize=True, temperature=10000),
                   d_model=d, backbone_channel_list=channels, fpn_top_down_levels=[2, 3], fpn_interp_model="nearest")

    def rope(**options):
        return RoPEAttention(rope_theta=10000.0, feat_sizes=[grid, grid], embedding_dim=d, num_heads=1,
                             downsample_rate=1, dropout=0.1, **options)

    layer = MemoryAttentionLayer(activation="relu", dim_feedforward=info.memoryFeedForward, dropout=0.1,
                                 pos_enc_at_attn=False, self_attention=rope(), d_model=d,
                                 pos_enc_at_cross_attn_keys=True, pos_enc_at_cross_attn_queries=False,
                                 cross_attention=rope(rope_k_repeat=True, kv_in_dim=info.memDim))
    memoryEncoder = MemoryEncoder(
        out_dim=info.memDim, in_dim=d,
        position_encoding=PositionEmbeddingSine(num_pos_feats=info.memDim, normalize=True, temperature=10000),
        mask_downsampler=MaskDownSampler(embed_dim=d, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=d, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
                    num_layers=info.fuserLayers))
    model = SAM2Base(image_encoder=ImageEncoder(trunk=trunk, neck=neck, scalp=1),
                     memory_attention=MemoryAttention(d_model=d, pos_enc_at_input=True, layer=layer,
                                                      num_layers=info.memoryAttentionLayers),
                     memory_encoder=memoryEncoder, num_maskmem=info.numMaskmem, image_size=imageSize,
                     **SAM2_BASE_OPTIONS)
    return model.eval()


def readCheckpointKeys(path) -> Tuple[str, ...]:
    """The parameter names of a checkpoint file without reading its tensors (memory-mapped load).

    Files torch cannot memory-map (the legacy format) are read whole. Raises
    CheckpointError for a missing or unreadable file.
    """
    from .checkpoints import readStateDict, requireTorch

    torch = requireTorch()
    path = Path(path)
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) files cannot be memory-mapped; readStateDict explains real damage
        return tuple(readStateDict(path))
    if isinstance(loaded, Mapping):
        for wrapper in ("model", "state_dict"):
            if isinstance(loaded.get(wrapper), Mapping):
                loaded = loaded[wrapper]
                break
        return tuple(key[len("module."):] if key.startswith("module.") else key for key in loaded)
    return ()


def isSam2Checkpoint(path) -> bool:
    """True when the checkpoint file holds a SAM 2 model (judged from its keys only)."""
    return isSam2StateDict(dict.fromkeys(readCheckpointKeys(path)))


def loadSam2Model(path, imageSize: int, architecture: Optional[str] = None):
    """Build a SAM2Base for ``imageSize`` inputs and load a checkpoint's weights into it, on the CPU.

    architecture: "hiera_t"/"hiera_s"/"hiera_b+"/"hiera_l" to insist on one, or
    None/"auto"/"custom" to take what the weights say. Returns (model in eval
    mode, Sam2ArchitectureInfo). Raises CheckpointError when the file cannot be
    read, is not SAM 2.1, or does not fit the requested size (the message names
    the size it looks like); DependencyError when sam2 is not installed.
    """
    from .checkpoints import readStateDict

    stateDict = readStateDict(path)
    info = detectSam2Architecture(stateDict)
    wanted = (architecture or "auto").lower()
    if wanted not in ("auto", "custom") and wanted != info.name:
        raise CheckpointError(f"{Path(path).name} does not fit the {wanted} architecture: its weights look like "
                              f"{info.describe()}. Choose the model that matches this file.")
    model = buildSam2Model(info, imageSize)
    try:
        model.load_state_dict(stateDict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{Path(path).name} looks like SAM 2.1 {info.describe()} but its weights do not load "
                              f"into that model ({str(exc).splitlines()[0][:200]}). Choose a SAM 2.1 or MedSAM2 "
                              "checkpoint.") from None
    logger.info("Loaded %s as SAM 2.1 %s at %d px", path, info.describe(), imageSize)
    return model, info
