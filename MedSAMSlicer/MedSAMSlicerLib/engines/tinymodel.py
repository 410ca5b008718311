"""Tiny SAM models for tests and the in-Slicer self-test: real segment-anything classes, tiny widths.

The input size (1024) and patch size (16) of real SAM are kept, so prompt
frames, the 64x64 embedding grid and the 256x256 low-resolution masks are the
real ones; only the widths and depths shrink, so a 1024x1024 image encodes in
a fraction of a second on a CPU. Weights are random (seeded): the masks mean
nothing, the code paths are the real ones.
"""

from pathlib import Path

TINY_EMBED_DIM = 32
TINY_DEPTH = 2
TINY_HEADS = 2
TINY_PROMPT_DIM = 32


def buildTinySam(seed: int = 0):
    """A randomly initialised segment_anything Sam with tiny widths (eval mode, CPU).

    Same img_size (1024) and patch size (16) as SAM; encoder embed dim 32, 2
    windowed-attention blocks (a global block over 4096 tokens would cost ~0.3 s
    per image on a CPU), prompt dim 32, decoder MLP 64.
    The same seed gives the same weights.
    """
    import torch

    from .checkpoints import ArchitectureInfo, buildSamModel

    info = ArchitectureInfo(
        name="custom", embedDim=TINY_EMBED_DIM, depth=TINY_DEPTH, numHeads=TINY_HEADS, patchSize=16,
        imgSize=1024, windowSize=14, globalAttnIndexes=(), useRelPos=True, mlpRatio=2.0,
        promptEmbedDim=TINY_PROMPT_DIM, maskInChans=8, decoderDepth=2, decoderMlpDim=64,
        numMultimaskOutputs=3, iouHeadDepth=3, iouHeadHiddenDim=32,
    )
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = buildSamModel(info)
        # segment-anything zero-initialises relative positions and positional
        # embeddings; random values make every weight matter in the tests.
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "rel_pos" in name or name.endswith("pos_embed"):
                    parameter.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def writeTinyCheckpoint(path, form: str = "bare", seed: int = 0, device: str = "cpu") -> Path:
    """Save a tiny SAM's weights to ``path`` as a real checkpoint file and return the path.

    form: "bare" (the state dict itself, like SAM's files) or "wrapped"
    ({"model": state_dict, "epoch": 0}, like MedSAM's training scripts).
    device: where the saved tensors live ("cuda" writes GPU tensors, as a
    checkpoint saved on a GPU machine would be).
    """
    import torch

    if form not in ("bare", "wrapped"):
        raise ValueError(f"form must be 'bare' or 'wrapped', not {form!r}")
    stateDict = {key: value.to(device) for key, value in buildTinySam(seed).state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stateDict if form == "bare" else {"model": stateDict, "epoch": 0}, str(path))
    return path
