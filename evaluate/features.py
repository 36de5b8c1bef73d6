"""Feature extractors ("backends") behind one small interface, and the perceptual-distance embedding.

A backend turns uint8 images ``(N, 3, H, W)`` into feature rows and, when it has a text tower, prompts
into the same space. Its ``backend_id`` names the weights (a hash of the file): numbers measured with two
different ids never compare.

* ``evaluator``: the dataset-trained CLIP (``spritegen evaluator``), always available offline.
* ``inception``: InceptionV3 pool features (2048-d) via torchmetrics/torch-fidelity, from a local
  weights file (``evaluate.inception_weights``: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
  or the same tensors as ``.safetensors``).
* ``clip``: an OpenAI/open_clip CLIP from a local weights file (``evaluate.clip_model`` + ``clip_weights``).

Weights files are read without running pickled code; a bad file is a UserError naming it, raised when
the backend is built. docs/evaluation.md ("Pretrained backends from local files") lists the formats.

Perceptual distance: LPIPS (AlexNet) when its backbone weights are already in torch's hub cache,
otherwise the evaluator's ViT tokens (``Evaluator.image_tokens``). Both are embeddings whose squared
Euclidean distance is the perceptual distance, so pairwise distances are one matrix product.
"""

from __future__ import annotations

import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from spritegen.errors import UserError


@dataclass
class Backend:
    name: str  # evaluator | inception | clip
    backend_id: str
    encode_images: Callable[[torch.Tensor], np.ndarray]  # uint8 (N, 3, H, W) -> (N, D)
    encode_texts: Callable[[list[str]], np.ndarray] | None = None  # prompts -> (N, D); None: no text tower
    # features and the evaluator-tokens perceptual embedding in one pass (evaluator backend only)
    encode_with_tokens: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]] | None = None
    # images and their encode_images rows -> {"type", "colour"}: (N,) class indices (evaluator backend only:
    # its trained attribute classifiers, evaluate/attributes.py)
    classify_attributes: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]] | None = None


def evaluator_backend(evaluator) -> Backend:
    return Backend("evaluator", evaluator.backend_id, evaluator.encode_images, evaluator.encode_texts,
                   evaluator.encode_images_with_tokens, evaluator.classify_attributes)


def _short_hash(path: Path) -> str:
    from spritegen.evaluate.evaluator import file_hash

    return file_hash(path)[:8]


def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from ``.safetensors`` or a ``torch.save`` file, read without
    running code: ``torch.load(weights_only=True)`` refuses pickled objects other than tensors and
    containers, so a hostile file fails here instead of executing. Any failure: a UserError naming the file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise several types for a damaged or foreign file
        raise UserError(f"{what}: {path} is not a readable weights file (a state dict saved with torch.save, or "
                        f".safetensors; pickled code is refused): {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{what}: {path} does not hold a state dict of tensors (got {type(state).__name__})")
    return state


def inception_backend(weights: str | Path | None, batch_size: int = 64) -> Backend:
    """InceptionV3 (FID's network) from a local file. Missing weights or torch-fidelity: a clear error."""
    if not weights or not Path(weights).is_file():
        raise UserError(f"backend 'inception' needs a local weights file (evaluate.inception_weights = {weights!r} "
                        "is not a file); this machine cannot download it. Use backend 'evaluator' instead.")
    if importlib.util.find_spec("torch_fidelity") is None:  # NoTrainInceptionV3 is torch-fidelity's network
        raise UserError("backend 'inception' needs torch-fidelity (pip install torch-fidelity)")
    from torchmetrics.image.fid import NoTrainInceptionV3

    weights = Path(weights)
    state = _read_state_dict(weights, "evaluate.inception_weights")
    # torch-fidelity reads its weights path with torch.load(weights_only=False), which would run code in a
    # hostile file; it also takes a file object, so hand it bytes written here from the tensors just read.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        # antialias=True: torchmetrics' FrechetInceptionDistance default, so FID here equals torchmetrics' FID
        net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                 feature_extractor_weights_path=buffer, antialias=True).eval()
    except RuntimeError as e:  # load_state_dict: missing/unexpected keys or wrong shapes
        raise UserError(f"evaluate.inception_weights: {weights} is not torch-fidelity's InceptionV3 state dict: "
                        f"{str(e)[:500]}") from None

    @torch.no_grad()
    def encode(images: torch.Tensor) -> np.ndarray:
        images = torch.as_tensor(images)
        # torchmetrics' extractor takes uint8 (N, 3, H, W) and resizes to 299 itself
        return torch.cat([net(images[s : s + batch_size]) for s in range(0, len(images), batch_size)]).double().numpy()

    return Backend("inception", f"inception-{_short_hash(weights)}", encode, None)


def clip_backend(model_name: str, weights: str | Path | None, batch_size: int = 64) -> Backend:
    """A pretrained open_clip / OpenAI CLIP from a local checkpoint file."""
    if not weights or not Path(weights).is_file():
        raise UserError(f"backend 'clip' needs a local weights file (evaluate.clip_weights = {weights!r} is not a "
                        f"file) for model {model_name!r}; this machine cannot download it.")
    import open_clip

    try:
        # open_clip reads the file with torch.load(weights_only=True) (or safetensors): no pickled code runs
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(weights))
    except Exception as e:  # open_clip raises several types for a wrong name/file
        raise UserError(f"could not load CLIP {model_name!r} from {weights} (an open_clip state dict or training "
                        f"checkpoint, or .safetensors; TorchScript archives are refused): {e}") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]

    @torch.no_grad()
    def enc_img(images: torch.Tensor) -> np.ndarray:
        images = torch.as_tensor(images)
        out = []
        for s in range(0, len(images), batch_size):
            x = F.interpolate(images[s : s + batch_size].float() / 255, size=(size, size), mode="bicubic",
                              align_corners=False, antialias=True).clamp(0, 1)
            out.append(model.encode_image((x - mean) / std, normalize=True))
        return torch.cat(out).double().numpy()

    @torch.no_grad()
    def enc_txt(prompts: list[str]) -> np.ndarray:
        return torch.cat([model.encode_text(tokenizer(prompts[s : s + 256]), normalize=True)
                          for s in range(0, len(prompts), 256)]).double().numpy()

    return Backend("clip", f"clip-{model_name}-{_short_hash(Path(weights))}", enc_img, enc_txt)


def make_backend(name: str, evaluator=None, inception_weights=None, clip_model: str = "ViT-B-32",
                 clip_weights=None) -> Backend:
    if name == "evaluator":
        if evaluator is None:
            raise UserError("backend 'evaluator' needs a trained evaluator (run `spritegen evaluator` first)")
        return evaluator_backend(evaluator)
    if name == "inception":
        return inception_backend(inception_weights)
    if name == "clip":
        return clip_backend(clip_model, clip_weights)
    raise UserError(f"unknown backend {name!r}; backends are evaluator, inception, clip")


# --- perceptual distance -----------------------------------------------------------------------------

LPIPS_ALEX_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet weights, as lpips loads them


def lpips_weights_available() -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_ALEX_FILE).is_file()


def lpips_embedder(batch_size: int = 64, pnet_rand: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    """LPIPS (AlexNet, v0.1) as an embedding: per layer, unit-normalise channels, scale by sqrt of the
    learned non-negative channel weights and by 1/sqrt(H·W); then ||φ(x) - φ(y)||² = LPIPS(x, y) exactly."""
    import lpips

    net = lpips.LPIPS(net="alex", verbose=False, pnet_rand=pnet_rand).eval()  # pnet_rand: tests only

    @torch.no_grad()
    def embed(images: torch.Tensor) -> np.ndarray:
        images = torch.as_tensor(images)
        out = []
        for s in range(0, len(images), batch_size):
            x = net.scaling_layer(images[s : s + batch_size].float() / 127.5 - 1)
            feats = net.net.forward(x)
            parts = []
            for k, f in enumerate(feats):
                f = lpips.normalize_tensor(f)  # (B, C, H, W) unit norm over C
                w = net.lins[k].model[-1].weight.flatten().clamp(min=0).sqrt()  # (C,)
                parts.append((f * w[None, :, None, None]).flatten(1) / np.sqrt(f.shape[2] * f.shape[3]))
            out.append(torch.cat(parts, 1))
        return torch.cat(out).float().numpy()

    embed.lpips = net  # the full LPIPS module, for parity tests
    return embed


def perceptual_embedder(mode: str, evaluator=None) -> tuple[str, Callable[[torch.Tensor], np.ndarray]]:
    """``(id, embed)``: id is ``lpips-alex`` or ``evaluator-tokens@<evaluator backend_id>`` (recorded in the
    metrics JSON as ``perceptual`` and as the backend_id of the perceptual metrics)."""
    if mode in ("auto", "lpips") and lpips_weights_available():
        return "lpips-alex", lpips_embedder()
    if mode == "lpips":
        raise UserError(f"evaluate.perceptual = lpips but {LPIPS_ALEX_FILE} is not in {torch.hub.get_dir()}/checkpoints")
    if evaluator is None:
        raise UserError("the perceptual-distance fallback needs the trained evaluator")
    # the fallback depends on the evaluator's weights, so its id names them
    return f"evaluator-tokens@{evaluator.backend_id}", evaluator.image_tokens
