"""Drop-in channels-last layers for SAM's upscaling path: ConvTranspose2x2 and ChannelsLastLayerNorm2d.

ConvTranspose2x2 replaces ConvTranspose2d(kernel 2, stride 2) by one matmul
and a 2x2 pixel shuffle; ChannelsLastLayerNorm2d replaces segment_anything's
LayerNorm2d by F.layer_norm over the last axis. Both keep the original
Parameters (same state_dict keys); swapFastLayers puts them in a Sam model.
fastdecoder.FastMaskDecoder uses them channels-last. torch is imported at
first use (the classes are built lazily, as module attributes); no slicer
import.
"""

import threading

LAYER_CLASS_NAMES = ("ConvTranspose2x2", "ChannelsLastLayerNorm2d")
_layerClassCache: dict = {}
_layerClassLock = threading.Lock()


def __getattr__(name):
    """Build ConvTranspose2x2 / ChannelsLastLayerNorm2d on first access (imports torch then)."""
    if name in LAYER_CLASS_NAMES:
        return _layerClasses()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _layerClasses() -> dict:
    with _layerClassLock:
        if not _layerClassCache:
            _layerClassCache.update(_buildLayerClasses())
    return _layerClassCache


def _buildLayerClasses() -> dict:
    import torch.nn.functional as F
    from torch import nn

    class ConvTranspose2x2(nn.Module):
        """nn.ConvTranspose2d(Cin, Cout, kernel_size=2, stride=2) as one matmul and a 2x2 pixel shuffle.

        Each input pixel maps linearly to a 2x2 block of output pixels, so the
        transposed convolution is x (Cin) -> W (Cin -> 4 Cout) -> shuffle. Keeps
        the given module's weight (Cin, Cout, 2, 2) and bias Parameters.
        """

        def __init__(self, conv):
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias
            self.inChannels, self.outChannels = int(conv.weight.shape[0]), int(conv.weight.shape[1])

        def forward(self, x):
            """(B, Cin, H, W) -> (B, Cout, 2H, 2W), as the transposed convolution."""
            batch, channels, height, width = x.shape
            weight = self.weight.permute(1, 2, 3, 0).reshape(4 * self.outChannels, channels)  # rows (co, a, b)
            out = weight @ x.reshape(batch, channels, height * width)
            if self.bias is not None:
                out = out + self.bias.repeat_interleave(4)[:, None]
            return F.pixel_shuffle(out.view(batch, 4 * self.outChannels, height, width), 2)

        def channelsLast(self, x):
            """(..., Cin) -> (..., 4, Cout): the 2x2 output block of each pixel, sub-pixel (a, b) at a * 2 + b."""
            return transposedConvChannelsLast(self, x)

    class ChannelsLastLayerNorm2d(nn.Module):
        """segment_anything's LayerNorm2d (normalise over channels of (B, C, H, W)) through F.layer_norm.

        Keeps the given module's weight, bias and eps. The result is a
        (B, C, H, W) view of channels-last memory.
        """

        def __init__(self, norm):
            super().__init__()
            self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

        def forward(self, x):
            """(B, C, H, W) -> (B, C, H, W), each pixel's channels normalised."""
            normed = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
            return normed.permute(0, 3, 1, 2)

    return {"ConvTranspose2x2": ConvTranspose2x2, "ChannelsLastLayerNorm2d": ChannelsLastLayerNorm2d}


def isStrideTwoTransposedConv(module) -> bool:
    from torch import nn

    if isinstance(module, _layerClasses()["ConvTranspose2x2"]):
        return True
    return (type(module) is nn.ConvTranspose2d and tuple(module.kernel_size) == (2, 2)
            and tuple(module.stride) == (2, 2) and tuple(module.padding) == (0, 0)
            and tuple(module.output_padding) == (0, 0) and tuple(module.dilation) == (1, 1)
            and module.groups == 1 and module.padding_mode == "zeros")


def isLayerNorm2d(module) -> bool:
    from segment_anything.modeling.common import LayerNorm2d

    return type(module) is LayerNorm2d or isinstance(module, _layerClasses()["ChannelsLastLayerNorm2d"])


def swapFastLayers(model) -> int:
    """Replace, in place, the kernel-2 stride-2 ConvTranspose2d and the LayerNorm2d modules of
    model.mask_decoder.output_upscaling and model.prompt_encoder.mask_downscaling by
    ConvTranspose2x2 / ChannelsLastLayerNorm2d sharing their Parameters.

    Same results up to rounding, same state_dict keys. Returns how many
    modules were replaced (0 the second time).
    """
    classes = _layerClasses()
    swapped = 0
    for sequence in (model.mask_decoder.output_upscaling, model.prompt_encoder.mask_downscaling):
        for index, module in enumerate(list(sequence)):
            if isinstance(module, (classes["ConvTranspose2x2"], classes["ChannelsLastLayerNorm2d"])):
                continue
            if isStrideTwoTransposedConv(module):
                sequence[index] = classes["ConvTranspose2x2"](module)
            elif isLayerNorm2d(module):
                sequence[index] = classes["ChannelsLastLayerNorm2d"](module)
            else:
                continue
            swapped += 1
    return swapped


def transposedConvMatrix(module):
    """A kernel-2 stride-2 transposed convolution's (Cin, Cout, 2, 2) weight as a linear map's (4 Cout, Cin)
    weight with rows ordered (a, b, co), and its bias repeated to (4 Cout,) (or None)."""
    inChannels, outChannels = module.weight.shape[:2]
    weight = module.weight.permute(2, 3, 1, 0).reshape(4 * outChannels, inChannels)
    return weight, None if module.bias is None else module.bias.repeat(4)


def transposedConvChannelsLast(module, x, matrix=None):
    """A kernel-2 stride-2 transposed convolution (either class) on channels-last x (..., Cin) -> (..., 4, Cout).

    matrix: transposedConvMatrix(module), when the caller reuses it.
    """
    import torch.nn.functional as F

    weight, bias = matrix or transposedConvMatrix(module)
    return F.linear(x, weight, bias).unflatten(-1, (4, weight.shape[0] // 4))
