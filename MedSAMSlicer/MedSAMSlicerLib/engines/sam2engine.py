"""Sam2Engine: SAM 2.1 and MedSAM2 checkpoints behind the Engine interface, with memory propagation.

Two preprocessing recipes, each exactly the one its weights were trained with:

- "medsam2" (MedSAM2's medsam2_infer_3D_CT.py): the slice, already windowed to
  [0, 1] by the intensity policy, is truncated to 0-255 like MedSAM2's
  np.uint8 cast, made three-channel, resized to 512x512 by Pillow's default
  (bicubic) filter, divided by 255 and normalised with ImageNet mean/std.
- "sam2" (sam2.sam2_image_predictor.SAM2ImagePredictor): the slice as 0-255
  RGB through sam2's own SAM2Transforms (square resize to 1024 with
  antialiasing, the same mean/std).

Both scale prompts as SAM 2 does (x * size / W, y * size / H: a box is given in
the slice's own pixel frame) and turn low-resolution logits into masks by a
bilinear resize to the slice and logits > 0.

``decode`` answers one slice as the image predictor does; propagation through
a volume goes through ``startMemorySession`` (sam2memory.Sam2MemorySession),
which tracks slice to slice with SAM 2's memory bank. torch and sam2 are
imported at first use; never imports slicer.
"""

import logging
import warnings
from typing import Optional, Sequence

import numpy as np

from .base import DecodeResult, Prompts, SliceEmbedding
from .devices import autocastContext, chooseDevice
from .torchengine import TorchEngine, asRgb, checkPromptsOnImage, checkpointDigest
from ..core.errors import InputError, PromptError

logger = logging.getLogger(__name__)

#: Recipe -> model input size (MedSAM2 was trained at 512, SAM 2.1 at 1024).
SAM2_RECIPES = {"medsam2": 512, "sam2": 1024}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Feature levels kept per slice: the two high-resolution maps (already projected by the mask decoder's
#: conv_s0 / conv_s1, as SAM2Base.forward_image leaves them) and the 16x-stride map.
FEATURE_LEVELS = ("highRes0", "highRes1", "lowRes")


class Sam2Engine(TorchEngine):
    """A SAM 2.1-family checkpoint (SAM 2.1 Hiera t/s/b+/l, MedSAM2) with its preprocessing recipe.

    checkpointPath: .pt file ({"model": state_dict}); or pass a built sam2
    SAM2Base as ``model`` (benchmarks, tests). recipe: "medsam2" (512 px) or
    "sam2" (1024 px). architecture: "hiera_t", "hiera_s", "hiera_b+", "hiera_l"
    to insist on one, None to detect. device: "auto", "cuda", "mps", "cpu".
    modelId: cache identity (default "<modelName or recipe_architecture>:<first
    12 hex of the file's SHA-256>"). batchSize: slices per encoder pass (default
    from free GPU memory; 1 on a CPU). mixedPrecision: bf16 autocast on CUDA.
    An embedding's features are a dict of fp16 tensors on the engine's device:
    "highRes0" (C/8, S/4, S/4), "highRes1" (C/4, S/8, S/8), "lowRes" (C, S/16,
    S/16) for input size S; encode is TorchEngine's (out-of-memory safe).
    Raises CheckpointError (bad file), InputError (bad recipe/device, a model
    built for another input size), DependencyError (no torch or sam2).
    """

    def __init__(self, checkpointPath=None, recipe: str = "medsam2", architecture: Optional[str] = None,
                 device: str = "auto", modelId: Optional[str] = None, *, model=None, modelName: Optional[str] = None,
                 batchSize: Optional[int] = None, displayName: Optional[str] = None, mixedPrecision: bool = True):
        from .checkpoints import requireTorch
        from .sam2checkpoints import detectSam2Architecture, loadSam2Model

        self._torch = requireTorch()
        if recipe not in SAM2_RECIPES:
            raise InputError(f"Unknown SAM 2 preprocessing recipe {recipe!r}; choose one of {', '.join(SAM2_RECIPES)}.")
        if (model is None) == (checkpointPath is None):
            raise InputError("Give a Sam2Engine either a checkpoint file or a built model, not both or neither.")
        self.recipe = recipe
        self.imgSize = SAM2_RECIPES[recipe]
        self._device = chooseDevice(device)
        if model is None:
            model, info = loadSam2Model(checkpointPath, self.imgSize, architecture)
            identity = checkpointDigest(checkpointPath)[:12]
        else:
            if int(model.image_size) != self.imgSize:
                raise InputError(f"The model was built for {model.image_size} px inputs; the {recipe} recipe needs "
                                 f"{self.imgSize}. Build it with image size {self.imgSize}.")
            info = detectSam2Architecture(model.state_dict())
            identity = f"mem{id(model):x}"
        self.architecture = architecture or info.name
        self.info = info
        self.model = self._placeModel(model.eval())
        self.modelId = modelId or f"{modelName or f'{recipe}_{self.architecture}'}:{identity}"
        self.displayName = displayName or f"{'MedSAM2' if recipe == 'medsam2' else 'SAM 2.1'} ({self.architecture})"
        self._initEncoding(batchSize)
        self.mixedPrecision = mixedPrecision
        self._constants: dict = {}  # per-device positional encodings, dense PE (constant for one input size)
        self._transforms = None  # sam2's SAM2Transforms, made at the first "sam2" encode

    # ----------------------------------------------------------------- device

    def autocast(self):
        """The mixed-precision context of this engine (bf16 on CUDA when enabled; a no-op on CPU and MPS)."""
        return autocastContext(self._device, self.mixedPrecision)

    def constant(self, name: str, make):
        """A per-device constant tensor, made once by ``make()`` (positional encodings)."""
        key = (name, self._device)
        if key not in self._constants:
            with self._torch.no_grad():
                self._constants[key] = make()
        return self._constants[key]

    # ----------------------------------------------------------------- encode

    def _estimatedBytesPerSlice(self) -> int:
        """Peak encoder memory per slice: Hiera's global-attention scores at stride 16 dominate."""
        tokens = (self.imgSize // 16) ** 2
        return 8 * tokens * tokens * 4 + 64 * self.imgSize ** 2 * 4

    def _afterFallback(self) -> None:
        """After an out-of-memory fallback to the CPU: the per-device constants are made again there."""
        self._constants.clear()

    def _encodeBatch(self, images: Sequence[np.ndarray], sizes: Sequence[tuple]) -> list:
        torch = self._torch
        with torch.no_grad():
            inputs = torch.stack([self.modelInput(image) for image in images]).to(self._device)
            with self.autocast():
                backbone = self.model.forward_image(inputs)
            levels = [level.to(torch.float16) for level in backbone["backbone_fpn"][-len(FEATURE_LEVELS):]]
        embeddings = []
        for index, size in enumerate(sizes):
            # clone: a view would keep the whole batch's storage alive in the cache
            features = {name: level[index].clone() for name, level in zip(FEATURE_LEVELS, levels)}
            nbytes = sum(t.numel() * t.element_size() for t in features.values())
            embeddings.append(SliceEmbedding(features=features, imageSize=tuple(size), nbytes=nbytes,
                                             extra={"recipe": self.recipe, "modelId": self.modelId}))
        return embeddings

    def modelInput(self, image: np.ndarray):
        """The (3, S, S) float32 CPU tensor the image encoder gets for one slice image, per the recipe."""
        rgb = asRgb(image)
        if self.recipe == "medsam2":
            return self._medsam2Input(rgb)
        if self._transforms is None:
            from sam2.utils.transforms import SAM2Transforms

            with warnings.catch_warnings():  # SAM2Transforms scripts its resize with torch.jit, deprecated in torch 2.x
                warnings.simplefilter("ignore", FutureWarning)
                self._transforms = SAM2Transforms(resolution=self.imgSize, mask_threshold=0.0)
        return self._transforms(np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)).float()

    def _medsam2Input(self, rgb: np.ndarray):
        from PIL import Image

        # MedSAM2 windows to 0-255 with a truncating np.uint8 cast, then resizes with Pillow's default filter.
        image8 = np.floor(np.clip(rgb.astype(np.float64) * 255.0, 0.0, 255.0)).astype(np.uint8)
        size = (self.imgSize, self.imgSize)
        if np.array_equal(image8[..., 0], image8[..., 1]) and np.array_equal(image8[..., 0], image8[..., 2]):
            channel = np.asarray(Image.fromarray(np.ascontiguousarray(image8[..., 0])).resize(size))
            resized = np.repeat(channel[..., None], 3, axis=2)  # = convert("RGB").resize(): channels resize alike
        else:
            resized = np.asarray(Image.fromarray(image8).resize(size))
        normalised = (resized.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        return self._torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))).float()

    # ----------------------------------------------------------------- decode

    def decode(self, embedding: SliceEmbedding, prompts: Prompts) -> DecodeResult:
        """One object's mask on one slice, as SAM2ImagePredictor.predict gives it (no memory).

        A single point without a previous mask is ambiguous: the decoder gives 3
        candidates and the one with the highest predicted IoU is kept. Raises
        PromptError for empty prompts, prompts entirely off the image, or a
        previous mask of the wrong size.
        """
        torch = self._torch
        self.checkEmbedding(embedding)
        points, maskInput = self.promptTensors(embedding, prompts)
        multimask = prompts.isAmbiguous and maskInput is None
        with torch.no_grad(), self.autocast():
            features = self.featureLevels(embedding)
            image = features[2] + self.model.no_mem_embed.view(1, -1, 1, 1)
            sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=maskInput)
            lowRes, iou, _, _ = self.model.sam_mask_decoder(
                image_embeddings=image, image_pe=self.model.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask,
                repeat_image=False, high_res_features=features[:2])
            lowRes, iou = lowRes.float(), iou.float()
            best = int(iou[0].argmax()) if multimask else 0
            return self.resultFromLogits(lowRes[:, best:best + 1], float(iou[0, best]), embedding)

    def checkEmbedding(self, embedding: SliceEmbedding) -> None:
        """InputError when ``embedding`` was made by another model."""
        madeBy = embedding.extra.get("modelId")
        if madeBy is not None and madeBy != self.modelId:
            raise InputError(f"This slice was encoded by another model ({madeBy}), not {self.modelId}; "
                             "encode it again with the current model.")

    def featureLevels(self, embedding: SliceEmbedding) -> list:
        """The three feature maps of a slice as (1, C, h, w) float32 tensors on the engine's device."""
        return [embedding.features[name].to(self._device, self._torch.float32)[None] for name in FEATURE_LEVELS]

    def promptTensors(self, embedding: SliceEmbedding, prompts: Prompts):
        """(points (coords (1, N, 2), labels (1, N)) in the model's input frame, mask input (1, 1, h, w) or None).

        A box becomes two points labelled 2 and 3 in front of the clicks, as
        SAM 2 was trained. Raises PromptError for empty or off-image prompts or
        a previous mask of the wrong size.
        """
        torch = self._torch
        height, width = embedding.imageSize
        checkPromptsOnImage(prompts, height, width)
        coords, labels = prompts.pointsXy.astype(np.float64), prompts.pointLabels.astype(np.int64)
        if prompts.boxXyxy is not None:
            coords = np.concatenate([np.asarray(prompts.boxXyxy, np.float64).reshape(2, 2), coords])
            labels = np.concatenate([[2, 3], labels])
        coords = coords / np.array([width, height]) * self.imgSize
        points = (torch.as_tensor(coords[None], dtype=torch.float32, device=self._device),
                  torch.as_tensor(labels[None], dtype=torch.int32, device=self._device))
        maskInput = None
        if prompts.previousLowResLogits is not None:
            logits = np.asarray(prompts.previousLowResLogits, np.float32)
            lowSize = (self.imgSize // 4, self.imgSize // 4)
            if logits.size != lowSize[0] * lowSize[1]:
                raise PromptError(f"The previous mask has shape {logits.shape}; this model needs {lowSize}. "
                                  "Pass the lowResLogits of a result of the same model.")
            maskInput = torch.as_tensor(logits.reshape(1, 1, *lowSize), device=self._device)
        return points, maskInput

    def resultFromLogits(self, lowRes, score: float, embedding: SliceEmbedding) -> DecodeResult:
        """A DecodeResult from (1, 1, h, w) low-res logits: bilinear resize to the slice, > 0 (SAM 2's postprocess)."""
        import torch.nn.functional as F

        height, width = embedding.imageSize
        logits = F.interpolate(lowRes.float(), size=(height, width), mode="bilinear", align_corners=False)
        clamped = self._torch.clamp(lowRes.float(), -32.0, 32.0)  # as the predictors hand logits back
        return DecodeResult(mask=(logits[0, 0] > 0.0).cpu().numpy(), score=float(np.clip(score, 0.0, 1.0)),
                            lowResLogits=clamped[0, 0].cpu().numpy())

    # ----------------------------------------------------------------- memory

    def startMemorySession(self, sliceCount: int, maxMemoryFrames: Optional[int] = None):
        """A new memory-propagation session over ``sliceCount`` slices (sam2memory.Sam2MemorySession)."""
        from .sam2memory import Sam2MemorySession

        return Sam2MemorySession(self, sliceCount, maxMemoryFrames)

