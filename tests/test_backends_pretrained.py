"""The pretrained backends (evaluate/features.py) on weights the tests build, since no real weights can be
downloaded here: torch-fidelity's InceptionV3 and a tiny open_clip CLIP, randomly initialised (seeded)
and saved in the file formats the real weights come in.

* Inception: our FD on the backend's features against torchmetrics' FrechetInceptionDistance computing on
  the same images from the same weights file.
* CLIP: the backend's image and text encodings against the same model in memory.
* Both: a missing, damaged or foreign file, or a pickle that would run code, is a UserError naming the
  file, raised when the backend is built, and the code never runs.

Inception at 299x299 costs about 0.25 s per image on one shared core, so the sets are small.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spritegen.data.synthetic import make_sprites
from spritegen.errors import UserError
from spritegen.evaluate import metrics as M
from spritegen.evaluate.features import clip_backend, inception_backend

N_PER_SET = 8  # images per side of the Inception FD: enough for 2 covariances, cheap at 299x299
TINY_CLIP = "spritegen-test-tiny-clip"


@pytest.fixture(autouse=True)
def one_thread():
    # 2 shared cores: one thread (torch and numpy's BLAS) is several times faster than oversubscribing them
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(threads)


def sha8(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:8]


# --- code that must never run ----------------------------------------------------------------------


def _write_marker(path: str) -> None:
    Path(path).write_text("unpickling ran code")


class RunsCodeWhenUnpickled:
    """Unpickling this calls ``_write_marker``: a stand-in for a hostile weights file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return _write_marker, (str(self.marker),)


def hostile_weights_file(path: Path, marker: Path) -> Path:
    torch.save({"Conv2d_1a_3x3.conv.weight": RunsCodeWhenUnpickled(marker)}, path)
    # the file really is hostile: an unrestricted unpickle runs the code
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path


# --- Inception ---------------------------------------------------------------------------------------


def random_inception_state(seed: int) -> dict[str, torch.Tensor]:
    """torch-fidelity's InceptionV3 state dict (same keys and shapes as the real file), random weights."""
    import torch_fidelity.feature_extractor_inceptionv3 as tfi

    # torch-fidelity's constructor always loads weights (a download, or a file): skip that for the bare net
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tfi, "load_state_dict_from_url", lambda *args, **kwargs: {})
        mp.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, strict=True: None)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    g = torch.Generator().manual_seed(seed)
    state = net.state_dict()  # an OrderedDict of tensors, as in torch-fidelity's file
    with torch.no_grad():
        for name, t in state.items():
            if name.endswith("num_batches_tracked"):
                continue
            if t.ndim == 4:  # conv: He init keeps the activations' scale through ~90 layers; torch's
                # default shrinks them towards 0, which would make every FD about 0 and the parity empty
                t.copy_(torch.randn(t.shape, generator=g) * (2 / t[0].numel()) ** 0.5)
            elif t.ndim == 2:  # fc
                t.copy_(torch.randn(t.shape, generator=g) / t.shape[1] ** 0.5)
            elif name.endswith("running_var"):  # batch norms away from identity, so their folding counts
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:  # batch-norm scale
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
    return state


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "weights-inception-random.pth"
    torch.save(random_inception_state(seed=0), path)  # the real file is torch.save(state_dict) too
    return path


@pytest.mark.slow  # about 20 s: two Inception passes at 299x299 and two 2048-d eigenproblems
def test_inception_fd_equals_torchmetrics_fid_on_the_same_images_and_weights(inception_file):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, _ = make_sprites(N_PER_SET, 32, seed=0)  # uint8 (N, 3, 32, 32)
    fake, _ = make_sprites(N_PER_SET, 32, seed=1)
    backend = inception_backend(inception_file)
    f_real, f_fake = backend.encode_images(real), backend.encode_images(fake)  # (N, 2048) each

    # torchmetrics builds its own network from the same file (trusted: this test wrote it)
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_file))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    expected = float(fid.compute())

    # same network, same images: the features agree (torchmetrics keeps their sums)
    np.testing.assert_allclose(fid.real_features_sum.numpy() / N_PER_SET, f_real.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fid.fake_features_sum.numpy() / N_PER_SET, f_fake.mean(0), rtol=1e-5, atol=1e-6)
    assert f_real.std(0).mean() > 1e-2  # the random network's features are not degenerate
    assert expected > 0.1

    # the FD the evaluate stage reports as `fd` (reference square root precomputed; test_eval_metrics checks
    # it equals M.fd). Relative 1e-4: torchmetrics returns float32, and with N << 2048 both covariances are
    # singular, so torchmetrics' sum of sqrt(eigenvalues) carries round-off of order sqrt(eps * |S1 S2|)
    # from each of ~2000 null eigenvalues; an absolute bound would depend on the features' scale.
    mu, sigma = M.gaussian_stats(f_real)
    ours = M.frechet_distance_to(*M.gaussian_stats(f_fake), mu, sigma, M.psd_sqrt(sigma))
    assert ours == pytest.approx(expected, rel=1e-4)


def test_inception_backend_id_names_the_weights_file(inception_file, tmp_path):
    assert inception_backend(inception_file).backend_id == f"inception-{sha8(inception_file)}"
    state = torch.load(inception_file, weights_only=True)
    state["fc.bias"][0] += 1  # one number changed: another file, another id
    other = tmp_path / "other.pth"
    torch.save(state, other)
    assert inception_backend(other).backend_id == f"inception-{sha8(other)}" != f"inception-{sha8(inception_file)}"


def test_inception_safetensors_file_encodes_like_the_torch_file(inception_file, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "inception.safetensors"
    save_file(dict(torch.load(inception_file, weights_only=True)), str(path))
    images, _ = make_sprites(2, 32, seed=3)
    np.testing.assert_array_equal(inception_backend(path).encode_images(images),
                                  inception_backend(inception_file).encode_images(images))


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "wrong_keys", "wrong_shape", "not_a_dict"])
def test_inception_bad_weights_file_is_a_user_error_naming_it(kind, inception_file, tmp_path):
    path = tmp_path / f"{kind}.pth"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif kind == "truncated":  # an interrupted copy of a real file
        path.write_bytes(inception_file.read_bytes()[: inception_file.stat().st_size // 2])
    elif kind == "wrong_keys":  # another network's state dict
        torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, path)
    elif kind == "wrong_shape":
        state = torch.load(inception_file, weights_only=True)
        state["fc.weight"] = torch.zeros(10, 2048)
        torch.save(state, path)
    elif kind == "not_a_dict":
        torch.save([torch.zeros(3)], path)
    # raised while the backend is built, before any image is encoded
    with pytest.raises(UserError, match=f"{kind}.pth"):
        inception_backend(path)


def test_inception_weights_that_run_code_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    path = hostile_weights_file(tmp_path / "weights-inception.pth", marker)
    with pytest.raises(UserError, match="weights-inception.pth.*pickled code is refused"):
        inception_backend(path)
    assert not marker.exists()


# --- CLIP --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny CLIP registered with open_clip under ``TINY_CLIP``, randomly initialised (seeded)."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip_config")
    config = {  # open_clip's own config format (open_clip/model_configs/*.json), scaled down
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)  # the file stem is the model name
    with torch.random.fork_rng():  # open_clip initialises from the global generator: seed it, then restore it
        torch.manual_seed(0)
        model = open_clip.create_model(TINY_CLIP).eval()
    return model


def save_clip(model, path: Path) -> Path:
    """Each file format ``create_model_and_transforms(name, pretrained=path)`` reads."""
    state = model.state_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif path.name.startswith("epoch"):  # open_clip's training checkpoint (DDP's "module." prefix kept)
        torch.save({"epoch": 1, "name": TINY_CLIP, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:  # a bare state dict, as open_clip's hub files hold
        torch.save(state, path)
    return path


@pytest.mark.parametrize("file_name", ["open_clip_pytorch_model.bin", "epoch_1.pt", "open_clip_model.safetensors"])
def test_clip_backend_encodes_like_the_model_in_memory(file_name, tiny_clip, tmp_path):
    import open_clip

    path = save_clip(tiny_clip, tmp_path / file_name)
    backend = clip_backend(TINY_CLIP, path)
    assert backend.backend_id == f"clip-{TINY_CLIP}-{sha8(path)}"

    images_a, records = make_sprites(40, 32, seed=0)  # at the model's image_size: the backend's resize is the identity
    images_b, _ = make_sprites(40, 32, seed=1)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN)[:, None, None]
    std = torch.tensor(open_clip.OPENAI_DATASET_STD)[:, None, None]
    prompts = [r.prompts[0] for r in records]
    with torch.no_grad():
        want_a, want_b = (tiny_clip.encode_image((x.float() / 255 - mean) / std, normalize=True).double().numpy()
                          for x in (images_a, images_b))  # (40, 32) each
        want_text = tiny_clip.encode_text(open_clip.get_tokenizer(TINY_CLIP)(prompts), normalize=True).double().numpy()

    got_a, got_b = backend.encode_images(images_a), backend.encode_images(images_b)
    np.testing.assert_allclose(got_a, want_a, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_b, want_b, rtol=0, atol=1e-5)
    np.testing.assert_allclose(backend.encode_texts(prompts), want_text, rtol=0, atol=1e-5)
    # 40 samples > 32 dimensions: full-rank covariances, so the FD is well conditioned
    assert M.fd(got_a, got_b) == pytest.approx(M.fd(want_a, want_b), rel=1e-6)


@pytest.mark.parametrize("kind", ["missing", "garbage", "wrong_model"])
def test_clip_bad_weights_file_is_a_user_error_naming_it(kind, tiny_clip, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint")
    elif kind == "wrong_model":  # weights of another architecture
        torch.save({"visual.proj": torch.zeros(3, 3)}, path)
    with pytest.raises(UserError, match=f"{kind}.pt"):
        clip_backend(TINY_CLIP, path)


def test_clip_weights_that_run_code_are_refused_without_running_it(tiny_clip, tmp_path):
    marker = tmp_path / "marker"
    path = hostile_weights_file(tmp_path / "clip.pt", marker)
    with pytest.raises(UserError, match="clip.pt"):
        clip_backend(TINY_CLIP, path)
    assert not marker.exists()
