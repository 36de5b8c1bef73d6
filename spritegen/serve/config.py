"""params.yaml ``serve``: the generation API's limits and defaults (``spritegen serve``, docs/serve.md).

    serve:
      families: [ldm, cvae, gan]   # the families offered; an untrained one answers 503 with its command
      max_samples: 8               # a request's num_samples
      max_concurrency: 2           # generations running at once; the rest wait in a bounded queue

Every limit is checked before any compute, and a request beyond it is a 422 that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from spritegen.config import ConfigError

FAMILIES = ("ldm", "cvae", "gan")
SAMPLERS = ("ddpm", "ddim", "dpm++", "dpm++sde", "unipc")


@dataclass
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={"doc": "bind address; anything but a loopback address also needs --allow-remote on the command line"})
    port: int = field(default=8000, metadata={"ge": 0, "le": 65535, "doc": "TCP port (0: any free port)"})
    families: list[Literal["ldm", "cvae", "gan"]] = field(default_factory=lambda: list(FAMILIES), metadata={"doc": "families offered (models/<family>); an untrained one is listed by /health and answers 503 with the command that trains it"})
    models_dir: str = field(default="models", metadata={"doc": "the project's model folder (relative to the project); names never resolve outside it"})
    device: str = field(default="auto", metadata={"doc": "auto | cpu | cuda | cuda:N (spritegen.runtime.pick_device)"})
    threads: int = field(default=2, metadata={"ge": 0, "doc": "torch CPU threads (0: leave as is); the same count gives the same pixels as `spritegen sample`"})
    max_prompt_chars: int = field(default=300, metadata={"ge": 1, "doc": "longest prompt accepted (characters)"})
    max_samples: int = field(default=8, metadata={"ge": 1, "doc": "largest num_samples of one request"})
    max_steps: int = field(default=100, metadata={"ge": 1, "doc": "most sampler steps (ldm)"})
    max_guidance: float = field(default=20.0, metadata={"gt": 0, "doc": "largest classifier-free guidance (ldm); the smallest is 0"})
    max_temperature: float = field(default=10.0, metadata={"gt": 0, "doc": "largest noise temperature (cvae, gan); the smallest is 0"})
    max_seed: int = field(default=2**31 - 1, metadata={"ge": 0, "doc": "largest seed"})
    max_concurrency: int = field(default=2, metadata={"ge": 1, "doc": "generations running at once (each on torch's threads)"})
    max_queue: int = field(default=8, metadata={"ge": 0, "doc": "requests allowed to wait for a slot; one more answers 429 with Retry-After"})
    queue_timeout_s: float = field(default=30.0, metadata={"gt": 0, "doc": "longest wait for a slot before 503 with Retry-After (never a hang)"})
    max_body_bytes: int = field(default=16384, metadata={"ge": 256, "doc": "largest request body; more answers 413"})
    preview_every: int = field(default=5, metadata={"ge": 1, "doc": "the stream's LDM previews: every this many denoising steps"})
    api_key_env: str = field(default="SPRITEGEN_API_KEY", metadata={"doc": "environment variable holding the API key; when it is set, /api/v1 requests (but health) need the header X-API-Key"})
    experiments_ttl_s: float = field(default=30.0, metadata={"ge": 0, "doc": "how long the experiments list (dvc exp show) is reused before it is read again"})

    def validate(self) -> None:
        if not self.families:
            raise ConfigError("serve.families: name at least one family")
        if len(set(self.families)) != len(self.families):
            raise ConfigError(f"serve.families: {self.families} names a family twice")
