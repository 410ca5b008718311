"""Tiny SAM 2.1 models for tests and benchmarks: sam2's own classes, tiny widths, the real file format.

The input sizes of the recipes (512 for MedSAM2, 1024 for SAM 2.1), the Hiera
patch stride (4) and the 16x feature grid are kept, so prompt frames, the
three feature levels, the memory bank and the low-resolution masks have the
real shapes; only widths and depths shrink. Weights are random (seeded): the
masks mean nothing, the code paths are the real ones. The object-score head is
biased towards "object present" so that tracking carries a mask from slice to
slice instead of declaring the object gone on the first one.
"""

from pathlib import Path

TINY_SAM2_EMBED_DIM = 8
TINY_SAM2_STAGES = (1, 1, 2, 1)
TINY_SAM2_MODEL_DIM = 32
TINY_SAM2_MEMORY_DIM = 16
TINY_SAM2_MEMORY_LAYERS = 2


def tinySam2Info():
    """The Sam2ArchitectureInfo of the tiny model (a "custom" Hiera size, as detectSam2Architecture reads it)."""
    from .sam2checkpoints import Sam2ArchitectureInfo

    return Sam2ArchitectureInfo(
        name="custom", embedDim=TINY_SAM2_EMBED_DIM, stages=TINY_SAM2_STAGES, numHeads=1,
        globalAttBlocks=(sum(TINY_SAM2_STAGES[:3]) - 1,), windowSpec=(8, 4, 14, 7), windowPosEmbedBkg=7,
        dModel=TINY_SAM2_MODEL_DIM, memDim=TINY_SAM2_MEMORY_DIM, numMaskmem=7,
        memoryAttentionLayers=TINY_SAM2_MEMORY_LAYERS, memoryFeedForward=64, fuserLayers=2)


def buildTinySam2(seed: int = 0, imageSize: int = 512, coverImage: bool = False):
    """A randomly initialised sam2 SAM2Base with tiny widths for ``imageSize`` inputs (eval mode, CPU).

    Hiera embed dim 8 (stages 1-1-2-1), model width 32, memory width 16, two
    memory-attention layers. The same seed gives the same weights.
    coverImage: bias the mask decoder's last upscaling layer and mask tokens so
    that every mask covers the whole slice (a model whose propagation never stops by itself:
    for tests of order, ranges and stop rules).
    """
    import torch

    from .sam2checkpoints import buildSam2Model

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = buildSam2Model(tinySam2Info(), imageSize)
        with torch.no_grad():
            # sam2 zero-initialises the trunk's positional embeddings: random values make them matter.
            for name, parameter in model.named_parameters():
                if name.startswith("image_encoder.trunk.pos_embed"):
                    parameter.normal_(0.0, 0.02)
            head = model.sam_mask_decoder.pred_obj_score_head
            last = head.layers[-1] if hasattr(head, "layers") else head
            last.bias.fill_(4.0)
            if coverImage:
                decoder = model.sam_mask_decoder
                decoder.output_upscaling[3].bias.fill_(8.0)  # upscaled features > 0 everywhere ...
                for mlp in decoder.output_hypernetworks_mlps:  # ... weighted by positive mask tokens
                    mlp.layers[-1].weight.zero_()
                    mlp.layers[-1].bias.fill_(1.0)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def writeTinySam2Checkpoint(path, seed: int = 0, coverImage: bool = False) -> Path:
    """Save a tiny SAM 2.1's weights to ``path`` as {"model": state_dict} (the official files' form); returns path.

    The weights do not depend on the input size: the recipe chooses it when the file is loaded.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": buildTinySam2(seed, coverImage=coverImage).state_dict()}, str(path))
    return path
