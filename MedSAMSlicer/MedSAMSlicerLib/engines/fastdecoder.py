"""An exact fast path for SAM's prompt encoder + mask decoder (the click-to-mask step on a CPU).

Same model, same weights, same maths as segment_anything's MaskDecoder and
TwoWayTransformer; only the order of operations changes, so results differ
from the stock modules by floating-point rounding alone (~1e-6 relative):

- Per slice, once (an LRU of the last few slices, keyed by the embedding's
  identity): the image tokens, and the prompt-independent projections of the
  first two-way block (keys and values of token-to-image attention, queries
  of image-to-token attention, all of image embedding + positional encoding).
  The dense prompt (no-mask vector, or the 1x1 convolution closing the mask
  encoder) enters by linearity: W (x + Wc h + bc) = W x + (W Wc) h + W bc.
- Attention between the few prompt tokens (N) and the 4096 image tokens is
  re-associated when heads x N < internal width, e.g. q (Wk x + bk) =
  (q Wk) x + q bk and P (Wv x + bv) = (P x) Wv + bv (rows of P sum to 1),
  which halves the work of the projections over image tokens.
- The image-to-token softmax runs over a contiguous axis (torch's softmax
  over a last axis of 7 is ~10x slower than over 4096).
- The output upscaling runs channels-last: each kernel-2, stride-2
  transposed convolution is one matmul (ConvTranspose2x2), LayerNorm2d is
  F.layer_norm over the last axis, and one pixel shuffle at the end places
  the mask logits; only the mask tokens asked for are turned into masks.
- Token-wise stages run in chunks of image tokens into reused buffers: on a
  CPU, faulting in fresh multi-MB temporaries costs as much as the maths.

The channels-last layers (ConvTranspose2x2, ChannelsLastLayerNorm2d,
swapFastLayers) live in fastlayers.py. torch is imported at first use; no
slicer import.
"""

import math
import threading
import weakref
from collections import OrderedDict

from .fastlayers import isLayerNorm2d, isStrideTwoTransposedConv, transposedConvChannelsLast, transposedConvMatrix

def supportsFastDecoding(model) -> bool:
    """True when ``model`` (a segment_anything Sam) has exactly the stock prompt encoder, mask decoder and
    two-way transformer classes this fast path re-implements (subclasses may compute something else)."""
    from torch import nn
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
    from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

    decoder, prompts = getattr(model, "mask_decoder", None), getattr(model, "prompt_encoder", None)
    if type(decoder) is not MaskDecoder or type(prompts) is not PromptEncoder:
        return False
    transformer = decoder.transformer
    if type(transformer) is not TwoWayTransformer or len(transformer.layers) < 1:
        return False
    for index, layer in enumerate(transformer.layers):
        attentions = (layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token)
        if type(layer) is not TwoWayAttentionBlock or layer.skip_first_layer_pe != (index == 0):
            return False
        if any(type(attention) is not Attention for attention in attentions):
            return False
    upscaling, last = decoder.output_upscaling, prompts.mask_downscaling[-1]
    elementwise = (nn.GELU, nn.ReLU, nn.SiLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity)
    return (type(transformer.final_attn_token_to_image) is Attention and len(upscaling) == 5
            and isStrideTwoTransposedConv(upscaling[0]) and isLayerNorm2d(upscaling[1])
            and isinstance(upscaling[2], elementwise) and isStrideTwoTransposedConv(upscaling[3])
            and isinstance(upscaling[4], elementwise) and type(last) is nn.Conv2d
            and tuple(last.kernel_size) == (1, 1) and tuple(last.stride) == (1, 1) and last.groups == 1
            and last.bias is not None)


def _splitHeads(x, heads: int):
    """(B, N, D) -> (B, heads, N, D / heads), as Attention._separate_heads."""
    return x.unflatten(-1, (heads, x.shape[-1] // heads)).transpose(1, 2)


def _joinHeads(x):
    """(B, heads, N, c) -> (B, N, heads * c), as Attention._recombine_heads."""
    return x.transpose(1, 2).flatten(2)


class _SliceState:
    """Prompt-independent tensors of one slice (batch 1, float32): tokens (1, T, E) = the image embedding;
    keysT (1, H, c, T) / values (1, H, T, c): key and value projections of the first block's token-to-image
    attention; queriesT (1, H, c, T): query projection of its image-to-token attention (no dense prompt)."""

    def __init__(self, tokens, keysT, values, queriesT):
        self.tokens, self.keysT, self.values, self.queriesT = tokens, keysT, values, queriesT


class _DensePrompt:
    """The dense prompt of a decode: the no-mask vector (1, 1, E), or mask features h (B, T, k) that the
    prompt encoder's closing 1x1 convolution (weight Wc (E, k), bias bc) turns into (B, T, E).

    Its contribution to a projection W of the image tokens, W (Wc h + bc), is
    applied through (W Wc) and W bc, never as a (T, D) tensor.
    """

    def __init__(self, vector=None, hidden=None, conv=None):
        self.vector, self.hidden, self.conv = vector, hidden, conv

    def tokens(self, start: int, stop: int):
        """Dense prompt embedding of image tokens start:stop: (1, 1, E) or (B, stop - start, E)."""
        import torch.nn.functional as F

        if self.vector is not None:
            return self.vector
        return F.linear(self.hidden[:, start:stop], self.conv.weight.flatten(1), self.conv.bias)

    def _projected(self, linear):
        """(linear.weight @ Wc (D, k) or None, linear.weight applied to the constant part (D,))."""
        if self.vector is not None:
            return None, linear.weight @ self.vector.reshape(-1)
        return linear.weight @ self.conv.weight.flatten(1), linear.weight @ self.conv.bias

    def scoreTerm(self, query, linear, start: int = 0, stop=None):
        """query (B, H, N, c) . (W dense)_t per head, for image tokens start:stop: (B, H, N, 1) or (B, H, N, n)."""
        matrix, offset = self._projected(linear)
        heads = query.shape[1]
        term = query @ offset.view(heads, -1, 1)
        if matrix is None:
            return term
        hidden = self.hidden[:, start:stop]
        return term + (query @ matrix.unflatten(0, (heads, -1))) @ hidden.transpose(1, 2)[:, None]

    def valueTerm(self, weights, linear):
        """sum_t weights_t (W dense)_t per head for attention weights (B, H, N, T) whose rows sum to 1: (B, H, N, c)."""
        matrix, offset = self._projected(linear)
        heads = weights.shape[1]
        term = offset.view(1, heads, 1, -1)
        if matrix is None:
            return term
        pooled = weights @ self.hidden[:, None]  # (B, H, N, k)
        return term + pooled @ matrix.unflatten(0, (heads, -1)).transpose(1, 2)


class FastMaskDecoder:
    """SAM's prompt encoder + mask decoder, computed faster with the same weights (see the module docstring).

    model: a segment_anything Sam for which supportsFastDecoding(model) holds.
    cacheSize: slices whose prompt-independent tensors are kept (each about
    10 MB for ViT-B: T x (E + 3 D) float32). fold: "auto" re-associates the
    attention over image tokens when heads x prompt tokens < internal width;
    True/False force it (tests). chunk: image tokens per step of the
    token-wise stages (keeps temporaries small and in cache; allocating and
    faulting in fresh multi-MB tensors costs more than the arithmetic on a
    CPU). Thread-safe: decodes on one FastMaskDecoder run one at a time.
    """

    def __init__(self, model, cacheSize: int = 4, fold="auto", chunk: int = 512):
        self.model, self.cacheSize, self.fold, self.chunk = model, max(1, int(cacheSize)), fold, max(1, int(chunk))
        self._states: OrderedDict = OrderedDict()  # id(embedding) -> (weakref to it, _SliceState)
        self._positional = None  # (1, T, E) dense positional encoding of the grid
        self._workspace: dict = {}  # name -> reused buffer
        self._lock = threading.Lock()
        self._decodeLock = threading.Lock()

    def reset(self) -> None:
        """Forget every per-slice and per-model tensor (after the model moved to another device)."""
        with self._decodeLock, self._lock:
            self._states.clear()
            self._workspace.clear()
            self._positional = None

    @property
    def cachedSlices(self) -> int:
        """How many slices' prompt-independent tensors are held now."""
        with self._lock:
            return len(self._states)

    def positionalTokens(self):
        """The prompt encoder's dense positional encoding as (1, T, E) tokens, computed once."""
        with self._lock:
            if self._positional is None:
                self._positional = self.model.prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()
            return self._positional

    def sliceState(self, embedding) -> _SliceState:
        """The prompt-independent tensors of ``embedding`` (a SliceEmbedding), from the LRU or computed now.

        Keyed by the embedding object itself (a weak reference), so a
        re-encoded or reloaded slice is never mistaken for another.
        """
        key = id(embedding)
        with self._lock:
            entry = self._states.get(key)
            if entry is not None and entry[0]() is embedding:
                self._states.move_to_end(key)
                return entry[1]
        state = self._computeSliceState(embedding)
        with self._lock:
            self._states[key] = (weakref.ref(embedding), state)
            self._states.move_to_end(key)
            while len(self._states) > self.cacheSize:
                self._states.popitem(last=False)
        return state

    def _computeSliceState(self, embedding) -> _SliceState:
        import torch

        first = self.model.mask_decoder.transformer.layers[0]
        toImage, toToken = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        device = self.model.prompt_encoder.no_mask_embed.weight.device
        with torch.no_grad():
            features = embedding.features.to(device, torch.float32)
            tokens = features.flatten(1).transpose(0, 1).contiguous()[None]  # (1, T, E)
            withPosition = tokens + self.positionalTokens()
            keysT = _splitHeads(toImage.k_proj(withPosition), toImage.num_heads).transpose(2, 3).contiguous()
            values = _splitHeads(toImage.v_proj(tokens), toImage.num_heads).contiguous()
            queriesT = _splitHeads(toToken.q_proj(withPosition), toToken.num_heads).transpose(2, 3).contiguous()
        return _SliceState(tokens, keysT, values, queriesT)

    def _buffer(self, name: str, shape: tuple, like):
        """A reused uninitialised tensor of ``shape`` (dtype and device of ``like``)."""
        buffer = self._workspace.get(name)
        if buffer is None or tuple(buffer.shape) != tuple(shape) or buffer.device != like.device:
            buffer = self._workspace[name] = like.new_empty(shape)
        return buffer

    def _chunks(self, count: int):
        return [(start, min(count, start + self.chunk)) for start in range(0, count, self.chunk)]

    # ---------------------------------------------------------------- decode

    def predict(self, embedding, points=None, boxes=None, masks=None, multimask: bool = False):
        """Decode prompts (in the model's input frame, as for PromptEncoder) on one encoded slice.

        points: (coords (B, N, 2) float, labels (B, N) int) or None; boxes:
        (B, 4) or None; masks: previous low-res logits (B, 1, 4h, 4w) or None.
        multimask: True decodes the 3 ambiguity-aware masks and keeps, per
        object, the one with the highest predicted IoU (as the engine did
        after the stock decoder); False keeps the single-mask output.
        Returns (low-res logits (B, 1, 4h, 4w), predicted IoU (B, 1)), new
        float32 tensors on the model's device.
        """
        import torch

        with torch.no_grad():
            state = self.sliceState(embedding)
            encoder, decoder = self.model.prompt_encoder, self.model.mask_decoder
            if points is None and boxes is None:
                sparse = state.tokens.new_zeros((masks.shape[0], 0, encoder.embed_dim))
            else:
                sparse, _ = encoder(points=points, boxes=boxes, masks=None)
            output = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
            prompt = torch.cat((output[None].expand(sparse.shape[0], -1, -1), sparse), dim=1)
            dense = self._densePrompt(masks)
            with self._decodeLock:
                queries, keys = self._transformer(state, prompt, dense)
                return self._masks(queries, keys, multimask, tuple(embedding.features.shape[-2:]))

    def _densePrompt(self, masks) -> _DensePrompt:
        encoder = self.model.prompt_encoder
        if masks is None:
            return _DensePrompt(vector=encoder.no_mask_embed.weight.view(1, 1, -1))
        hidden = encoder.mask_downscaling[:-1](masks)  # (B, k, h, w) before the closing 1x1 convolution
        return _DensePrompt(hidden=hidden.permute(0, 2, 3, 1).flatten(1, 2), conv=encoder.mask_downscaling[-1])

    def _folds(self, heads: int, promptTokens: int, internalDim: int) -> bool:
        if self.fold == "auto":
            return heads * promptTokens < internalDim
        return bool(self.fold)

    def _transformer(self, state: _SliceState, prompt, dense):
        """TwoWayTransformer.forward on (1, T, E) image tokens and (B, N, E) prompt tokens -> (queries, keys)."""
        import torch

        transformer = self.model.mask_decoder.transformer
        position = self.positionalTokens()
        keys = self._buffer("keys", (prompt.shape[0],) + tuple(state.tokens.shape[1:]), state.tokens)
        queries = self._firstBlock(transformer.layers[0], state, prompt, dense, keys)
        for layer in transformer.layers[1:]:
            queries = self._block(layer, queries, keys, prompt, position)
        withPosition = torch.add(keys, position, out=self._buffer("keysWithPosition", keys.shape, keys))
        update = self._tokenToImage(transformer.final_attn_token_to_image, queries + prompt, withPosition, keys)
        return transformer.norm_final_attn(queries + update), keys

    def _firstBlock(self, layer, state: _SliceState, prompt, dense, keys):
        """TwoWayAttentionBlock (skip_first_layer_pe) from the slice's precomputed projections plus the dense
        prompt's; writes the new image tokens into ``keys`` and returns the new prompt tokens."""
        import torch

        queries = layer.norm1(layer.self_attn(q=prompt, k=prompt, v=prompt))
        toImage, toToken = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        query = _splitHeads(toImage.q_proj(queries + prompt), toImage.num_heads)
        scores = query @ state.keysT + dense.scoreTerm(query, toImage.k_proj)
        weights = torch.softmax(scores / math.sqrt(query.shape[-1]), dim=-1)
        attended = weights @ state.values + dense.valueTerm(weights, toImage.v_proj)
        queries = layer.norm2(queries + toImage.out_proj(_joinHeads(attended)))
        queries = layer.norm3(queries + layer.mlp(queries))
        self._imageToToken(toToken, layer.norm4, keys, lambda start, stop: state.tokens[:, start:stop]
                           + dense.tokens(start, stop), None, queries + prompt, queries,
                           queriesT=state.queriesT, dense=dense)
        return queries

    def _block(self, layer, queries, keys, prompt, position):
        """TwoWayAttentionBlock.forward with positional encodings; updates ``keys`` in place, returns the queries."""
        import torch

        query = queries + prompt
        queries = layer.norm1(queries + layer.self_attn(q=query, k=query, v=queries))
        withPosition = torch.add(keys, position, out=self._buffer("keysWithPosition", keys.shape, keys))
        update = self._tokenToImage(layer.cross_attn_token_to_image, queries + prompt, withPosition, keys)
        queries = layer.norm2(queries + update)
        queries = layer.norm3(queries + layer.mlp(queries))
        self._imageToToken(layer.cross_attn_image_to_token, layer.norm4, keys,
                           lambda start, stop: keys[:, start:stop], withPosition, queries + prompt, queries)
        return queries

    def _tokenToImage(self, attention, query, keys, values):
        """Attention(q=query (B, N, E), k=keys, v=values (B, T, E)) -> (B, N, E); re-associated when it folds."""
        import torch

        heads = attention.num_heads
        if not self._folds(heads, query.shape[1], attention.internal_dim):
            return attention(q=query, k=keys, v=values)
        projected = _splitHeads(attention.q_proj(query), heads)  # (B, H, N, c)
        keyWeight = attention.k_proj.weight.unflatten(0, (heads, -1))  # (H, c, E)
        scores = ((projected @ keyWeight).flatten(1, 2) @ keys.transpose(1, 2)).unflatten(1, (heads, -1))
        scores += projected @ attention.k_proj.bias.view(heads, -1, 1)
        weights = torch.softmax(scores.div_(math.sqrt(projected.shape[-1])), dim=-1)  # (B, H, N, T); rows sum to 1
        pooled = (weights.flatten(1, 2) @ values).unflatten(1, (heads, -1))  # (B, H, N, E)
        valueWeight = attention.v_proj.weight.unflatten(0, (heads, -1)).transpose(1, 2)  # (H, E, c)
        out = pooled @ valueWeight + attention.v_proj.bias.view(heads, 1, -1)
        return attention.out_proj(_joinHeads(out))

    def _imageToToken(self, attention, norm, keys, residual, imageQueries, promptKeys, promptValues,
                      queriesT=None, dense=None):
        """keys[:, s:e] = norm(residual(s, e) + Attention(q=imageQueries, k=promptKeys, v=promptValues)[:, s:e]),
        chunk by chunk of image tokens.

        imageQueries (B, T, E), or queriesT: their projection (1, H, c, T),
        precomputed, plus ``dense``'s share. Scores are (B, H, N, n) so the
        softmax over the N prompt tokens runs along a contiguous axis.
        """
        import torch

        heads = attention.num_heads
        promptK = _splitHeads(attention.k_proj(promptKeys), heads)  # (B, H, N, c)
        promptV = _splitHeads(attention.v_proj(promptValues), heads)
        scale = math.sqrt(promptK.shape[-1])
        folds = self._folds(heads, promptK.shape[2], attention.internal_dim)
        if queriesT is None and folds:
            foldedQuery = (promptK @ attention.q_proj.weight.unflatten(0, (heads, -1))).flatten(1, 2)  # (B, H N, E)
            queryBias = promptK @ attention.q_proj.bias.view(heads, -1, 1)
        if folds:
            perToken = (promptV @ attention.out_proj.weight.unflatten(1, (heads, -1)).permute(1, 2, 0)).flatten(1, 2)
        for start, stop in self._chunks(keys.shape[1]):
            if queriesT is not None:
                scores = promptK @ queriesT[..., start:stop] + dense.scoreTerm(promptK, attention.q_proj, start, stop)
            elif folds:
                scores = (foldedQuery @ imageQueries[:, start:stop].transpose(1, 2)).unflatten(1, (heads, -1))
                scores += queryBias
            else:
                chunkQueries = _splitHeads(attention.q_proj(imageQueries[:, start:stop]), heads)
                scores = promptK @ chunkQueries.transpose(2, 3)
            weights = torch.softmax(scores.div_(scale), dim=2)  # (B, H, N, n)
            if folds:
                update = torch.baddbmm(attention.out_proj.bias, weights.flatten(1, 2).transpose(1, 2), perToken)
            else:
                update = attention.out_proj(_joinHeads(weights.transpose(2, 3) @ promptV))
            keys[:, start:stop] = norm(update.add_(residual(start, stop)))

    def _masks(self, queries, keys, multimask: bool, grid: tuple):
        """Mask tokens -> the chosen mask's low-res logits (B, 1, 4h, 4w) and predicted IoU (B, 1)."""
        import torch
        import torch.nn.functional as F

        decoder = self.model.mask_decoder
        batch = queries.shape[0]
        iou = decoder.iou_prediction_head(queries[:, 0])  # (B, num_mask_tokens)
        rows = torch.arange(batch, device=queries.device)
        if multimask:
            choice = iou[:, 1:].argmax(dim=1) + 1
        else:
            choice = torch.zeros(batch, dtype=torch.long, device=queries.device)
        hyper = torch.stack([mlp(queries[:, 1 + index]) for index, mlp in
                             enumerate(decoder.output_hypernetworks_mlps)], dim=1)[rows, choice]  # (B, C8)
        upscaling = decoder.output_upscaling
        norm = upscaling[1]
        logits = self._buffer("logits", (batch, keys.shape[1], 16), keys)
        first, second = transposedConvMatrix(upscaling[0]), transposedConvMatrix(upscaling[3])
        for start, stop in self._chunks(keys.shape[1]):
            pixels = transposedConvChannelsLast(upscaling[0], keys[:, start:stop], first)  # (B, n, 4, C4)
            pixels = upscaling[2](F.layer_norm(pixels, (pixels.shape[-1],), norm.weight, norm.bias, norm.eps))
            pixels = upscaling[4](transposedConvChannelsLast(upscaling[3], pixels, second))  # (B, n, 4, 4, C8)
            chunk = torch.bmm(pixels.reshape(batch, -1, pixels.shape[-1]), hyper[:, :, None])
            logits[:, start:stop] = chunk.view(batch, stop - start, 16)
        height, width = grid
        logits = logits.view(batch, height, width, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return logits.reshape(batch, 1, 4 * height, 4 * width), iou[rows, choice][:, None]
