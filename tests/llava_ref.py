"""Test-side oracle for the LLaVA port: tiny random checkpoints written by transformers' own
LlavaForConditionalGeneration / LlavaNextForConditionalGeneration / LlavaOnevisionForConditionalGeneration
(save_pretrained, so the llava-hf names: language_model.model.*, vision_tower.*, multi_modal_projector.*,
image_newline), with the files llava-hf publishes beside them: a tokenizer.json (Llama's legacy normalizer with
byte fallback, or Qwen2's byte-level BPE) with <image> / <video> added, tokenizer_config.json,
chat_template.json in llava-hf's form ({% generation %} tags included), preprocessor_config.json,
processor_config.json and generation_config.json.

The reference processor is transformers' PIL image processor of the checkpoint's type plus its
LlavaProcessor / LlavaNextProcessor / LlavaOnevisionProcessor, with the tokenizer read from tokenizer.json as
it stands (TokenizersBackend): transformers 5's LlamaTokenizer rebuilds the pipeline from the vocabulary
(Metaspace, no "▁" after special tokens), which is not what the published tokenizer.json — nor the original
LLaVA, which tokenizes the text around each <image> on its own — does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from internvl_ref import QWEN2_PRETOKENIZE_REGEX, _dump

# The templates of llava-hf/llava-1.5-7b-hf, llava-hf/llava-v1.6-mistral-7b-hf and
# llava-hf/llava-onevision-qwen2-0.5b-ov-hf (chat_template.json).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ 'ASSISTANT:' }}{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + message['content'][0]['text']"
    " + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}{% for "
    "content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}{% generation %}"
    "{{ ' ' + message['content'][0]['text'] + '</s> '}}{% endgeneration %}{% else %}"
    "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}{% for "
    "content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_CORPUS = (
    "USER: What is in the picture? ASSISTANT: A cat is sitting on a red chair next to the window.",
    "Describe the image in detail. Compare the two images, please.",
    "The quick brown fox jumps over the lazy dog. [INST] Hello there [/INST]",
    "user assistant system\nuser assistant\n The chart shows the numbers 1, 2, 3, 10, 42 and 100.",
)


def pinpoints(model_type: str, side: int) -> list[list[int]]:
    """llava-hf's 336-based NeXT grids and OneVision's 384-based 6x6 ones, scaled to a tile of ``side``."""
    if model_type == "llava_next":
        return [[side * h, side * w] for h, w in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]
    return [[side * i, side * j] for i in range(1, 7) for j in range(1, 7)]


@dataclass(frozen=True)
class TinyLlava:
    """Knobs of a tiny random checkpoint of one of the three model types."""

    model_type: str = "llava"
    text_type: str = "llama"  # llama | mistral | qwen2
    hidden_size: int = 32
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    num_hidden_layers: int = 2
    intermediate_size: int = 64
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # Mistral's; None: full causal attention
    vision_hidden: int = 16
    vision_layers: int = 2
    image_size: int = 28
    patch_size: int = 7
    vision_feature_layer: int | tuple = -2
    vision_feature_select_strategy: str = "default"
    image_processor: str = "CLIPImageProcessor"  # LLaVA-1.5: "LlavaImageProcessor" pads to a square (do_pad)
    extra_config: dict = field(default_factory=dict)

    @property
    def siglip(self) -> bool:
        return self.model_type == "llava_onevision"


# ----------------------------------------------------------------------------- tokenizers


def _llama_tokenizer():
    """A Llama-2 style tokenizer.json: BPE with byte fallback, the legacy normalizer (prepend and
    replace spaces by "▁"), <s> added in front, and <image> added after the vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors, trainers

    legacy = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.normalizer = legacy
    trained.train_from_iterator(list(_CORPUS) * 2, trainers.BpeTrainer(vocab_size=260, show_progress=False))
    spec = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token in sorted(spec["vocab"], key=spec["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = legacy
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])  # fmt: skip
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken("<image>", normalized=False)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                 "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False}


def _qwen2_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(_CORPUS) * 2, trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok, {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
                 "tokenizer_class": "Qwen2Tokenizer", "add_prefix_space": False, "errors": "replace"}


def _write_tokenizer(path: Path, k: TinyLlava):
    tok, config = _qwen2_tokenizer() if k.text_type == "qwen2" else _llama_tokenizer()
    tok.save(str(path / "tokenizer.json"))
    added = {
        str(i): {"content": t.content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for i, t in sorted(tok.get_added_tokens_decoder().items())
    }  # fmt: skip
    template = {"llava": LLAVA_TEMPLATE, "llava_next": MISTRAL_TEMPLATE, "llava_onevision": ONEVISION_TEMPLATE}
    _dump(path / "tokenizer_config.json", {**config, "added_tokens_decoder": added, "model_max_length": 4096,
                                           "clean_up_tokenization_spaces": False, "padding_side": "left"})  # fmt: skip
    _dump(path / "chat_template.json", {"chat_template": template[k.model_type]})
    return tok


# ----------------------------------------------------------------------------- checkpoint


def _vision_config(k: TinyLlava) -> dict:
    tower = {"hidden_size": k.vision_hidden, "intermediate_size": 2 * k.vision_hidden, "num_hidden_layers": k.vision_layers,
             "num_attention_heads": 2, "image_size": k.image_size, "patch_size": k.patch_size}  # fmt: skip
    if k.siglip:
        return {"model_type": "siglip_vision_model", "vision_use_head": False, **tower}
    return {"model_type": "clip_vision_model", "projection_dim": 16, **tower}


def _text_config(k: TinyLlava, vocab: int, tok) -> dict:
    text = {"model_type": k.text_type, "hidden_size": k.hidden_size, "intermediate_size": k.intermediate_size,
            "num_hidden_layers": k.num_hidden_layers, "num_attention_heads": k.num_attention_heads,
            "num_key_value_heads": k.num_key_value_heads, "vocab_size": vocab, "max_position_embeddings": 4096,
            "tie_word_embeddings": k.tie_word_embeddings, "rms_norm_eps": 1e-5}  # fmt: skip
    if k.text_type == "qwen2":
        return {**text, "rope_theta": 1_000_000.0, "eos_token_id": tok.token_to_id("<|im_end|>")}
    return {**text, "bos_token_id": 1, "eos_token_id": 2, **({"sliding_window": k.sliding_window} if k.text_type == "mistral" else {})}


def _model_config(k: TinyLlava, vocab: int, tok):
    from transformers import LlavaConfig, LlavaNextConfig, LlavaOnevisionConfig

    cls = {"llava": LlavaConfig, "llava_next": LlavaNextConfig, "llava_onevision": LlavaOnevisionConfig}[k.model_type]
    extra = {"image_grid_pinpoints": pinpoints(k.model_type, k.image_size)} if k.model_type != "llava" else {}
    if k.model_type == "llava_onevision":
        extra["video_token_index"] = tok.token_to_id("<video>")
    layer = list(k.vision_feature_layer) if isinstance(k.vision_feature_layer, tuple) else k.vision_feature_layer
    return cls(vision_config=_vision_config(k), text_config=_text_config(k, vocab, tok),
               image_token_index=tok.token_to_id("<image>"), vision_feature_layer=layer,
               vision_feature_select_strategy=k.vision_feature_select_strategy,
               tie_word_embeddings=k.tie_word_embeddings, **extra, **k.extra_config)  # fmt: skip


def _reinitialise(model, seed: int) -> None:
    """Weights at scales that keep activations O(1) and the logits well apart (transformers' 0.02 does not)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "embed_tokens" in name:
                p.copy_(noise)
            elif p.ndim >= 2:
                p.copy_(noise * p[0].numel() ** -0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:  # biases, the class embedding, image_newline
                p.copy_(noise * (0.5 if ("class_embedding" in name or "newline" in name) else 0.05))


def _preprocessor_config(k: TinyLlava) -> dict:
    common = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
              "resample": 3, "rescale_factor": 0.00392156862745098}  # fmt: skip
    s = k.image_size
    if k.model_type == "llava":
        pad = {"do_pad": True} if k.image_processor == "LlavaImageProcessor" else {}
        return {**common, **pad, "crop_size": {"height": s, "width": s}, "do_center_crop": True,
                "image_processor_type": k.image_processor, "processor_class": "LlavaProcessor",
                "size": {"shortest_edge": s}}  # fmt: skip
    if k.model_type == "llava_next":
        return {**common, "crop_size": {"height": s, "width": s}, "do_center_crop": True, "do_pad": True,
                "image_grid_pinpoints": pinpoints(k.model_type, s), "image_processor_type": "LlavaNextImageProcessor",
                "processor_class": "LlavaNextProcessor", "size": {"shortest_edge": s}}  # fmt: skip
    return {**common, "do_pad": True, "image_grid_pinpoints": pinpoints(k.model_type, s), "size": {"height": s, "width": s},
            "image_processor_type": "LlavaOnevisionImageProcessor", "processor_class": "LlavaOnevisionProcessor"}


def _processor_config(k: TinyLlava) -> dict:
    if k.model_type == "llava_onevision":
        return {"num_image_tokens": (k.image_size // k.patch_size) ** 2, "vision_aspect_ratio": "anyres_max_9",
                "vision_feature_select_strategy": k.vision_feature_select_strategy,
                "processor_class": "LlavaOnevisionProcessor"}  # fmt: skip
    cls = "LlavaProcessor" if k.model_type == "llava" else "LlavaNextProcessor"
    return {"patch_size": k.patch_size, "num_additional_image_tokens": 1, "processor_class": cls,
            "vision_feature_select_strategy": k.vision_feature_select_strategy}  # fmt: skip


def write_checkpoint(path: str | Path, knobs: TinyLlava = TinyLlava(), seed: int = 0) -> Path:
    """Write a tiny random checkpoint in the llava-hf layout with transformers' save_pretrained; returns the folder."""
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration
    from transformers import LlavaOnevisionForConditionalGeneration

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = _write_tokenizer(path, knobs)
    vocab = -(-tok.get_vocab_size() // 16) * 16 + 16  # padded above the tokenizer's, as the published ones are
    classes = {"llava": LlavaForConditionalGeneration, "llava_next": LlavaNextForConditionalGeneration,
               "llava_onevision": LlavaOnevisionForConditionalGeneration}  # fmt: skip
    torch.manual_seed(seed)
    model = classes[knobs.model_type](_model_config(knobs, vocab, tok)).eval()
    _reinitialise(model, seed)
    model.save_pretrained(str(path))
    eos = tok.token_to_id("<|im_end|>" if knobs.text_type == "qwen2" else "</s>")
    _dump(path / "generation_config.json", {"eos_token_id": eos, **({"bos_token_id": 1} if knobs.text_type != "qwen2" else {})})
    _dump(path / "preprocessor_config.json", _preprocessor_config(knobs))
    _dump(path / "processor_config.json", _processor_config(knobs))
    if knobs.model_type == "llava_onevision":  # llava-hf's: the class defaults at the tile size
        s = knobs.image_size
        _dump(path / "video_preprocessor_config.json", {
            "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": s, "width": s},
            "video_processor_type": "LlavaOnevisionVideoProcessor", "processor_class": "LlavaOnevisionProcessor"})  # fmt: skip
    return path


# ----------------------------------------------------------------------------- reference


def reference_model(path: str | Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(path), dtype="float32", attn_implementation="eager").eval()


def reference_processor(path: str | Path):
    """The checkpoint's processor class over its PIL image processor and tokenizer.json as it stands."""
    from transformers import LlavaNextProcessor, LlavaOnevisionProcessor, LlavaProcessor, TokenizersBackend
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    path = Path(path)
    image_config = json.loads((path / "preprocessor_config.json").read_text())
    image_cls = {"CLIPImageProcessor": CLIPImageProcessorPil, "LlavaImageProcessor": LlavaImageProcessorPil,
                 "LlavaNextImageProcessor": LlavaNextImageProcessorPil,
                 "LlavaOnevisionImageProcessor": LlavaOnevisionImageProcessorPil}[image_config["image_processor_type"]]
    counts = json.loads((path / "processor_config.json").read_text())
    cls = {"LlavaProcessor": LlavaProcessor, "LlavaNextProcessor": LlavaNextProcessor,
           "LlavaOnevisionProcessor": LlavaOnevisionProcessor}[counts.pop("processor_class")]  # fmt: skip
    template = json.loads((path / "chat_template.json").read_text())["chat_template"]
    tokenizer = TokenizersBackend.from_pretrained(str(path))
    if cls is LlavaOnevisionProcessor:
        cls = _image_only(cls)
    return cls(image_processor=image_cls.from_pretrained(str(path)), tokenizer=tokenizer, chat_template=template, **counts)


def _image_only(cls):
    """LlavaOnevisionProcessor without its video processor, which needs torchvision (absent here); the
    image and text paths are the class's own."""

    class ImageOnly(cls):
        def check_argument_for_proper_class(self, name, arg):
            return None if name == "video_processor" and arg is None else super().check_argument_for_proper_class(name, arg)

    return ImageOnly


def reference_inputs(processor, messages: list[dict]) -> dict:
    """apply_chat_template(tokenize=True) with the images in the messages (content {"type": "image", "image": PIL}),
    as numpy: input_ids (1, T), pixel_values, image_sizes (NeXT / OneVision), and the rendered text."""
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                        return_tensors="np")  # fmt: skip
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return {"text": text, **{k: np.asarray(v) for k, v in out.items()}}


def _torch_inputs(inputs: dict) -> dict:
    import torch

    skip = {"text", "attention_mask"}
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items() if k not in skip}


def reference_logits(model, inputs: dict) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**_torch_inputs(inputs)).logits[0].float().numpy()


def reference_greedy(model, inputs: dict, max_new_tokens: int, eos_token_id: int):
    """(greedy ids after the prompt, (steps, vocab) logits each was chosen from) via model.generate."""
    import torch

    with torch.no_grad():
        out = model.generate(**_torch_inputs(inputs), do_sample=False, max_new_tokens=max_new_tokens,
                             min_new_tokens=0, eos_token_id=[eos_token_id], pad_token_id=eos_token_id,
                             num_beams=1, repetition_penalty=1.0, return_dict_in_generate=True, output_logits=True)
    tokens = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    return tokens, torch.cat(out.logits).float().numpy()


# ----------------------------------------------------------------------------- OneVision video
# LlavaOnevisionVideoProcessor runs on torchvision, which the test environment lacks: its pixel path is
# transcribed below with the same torch ops; the token count is the processor's own replace_video_token.


def upstream_pixel_values_videos(frames: list, height: int, width: int) -> np.ndarray:
    """(1, T, 3, H, W) as the video processor builds them from PIL frames: tvF.resize (bicubic, antialias; on
    CPU torchvision runs torch's uint8 kernel, called directly here) where the size differs, then the fused
    rescale + normalize (mean and std times 1 / rescale_factor)."""
    import torch

    x = torch.from_numpy(np.stack([np.asarray(f.convert("RGB")) for f in frames])).permute(0, 3, 1, 2).contiguous()
    if tuple(x.shape[-2:]) != (height, width):
        x = torch.nn.functional.interpolate(x, size=[height, width], mode="bicubic", antialias=True)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]) * (1.0 / 0.00392156862745098)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]) * (1.0 / 0.00392156862745098)
    x = (x.to(torch.float32) - mean[:, None, None]) / std[:, None, None]
    return x[None].numpy()


class TranscribedVideoProcessor:
    """Stands in for LlavaOnevisionVideoProcessor inside the real processor: frames (one video, PIL) to
    pixel_values_videos at the checkpoint's video_preprocessor_config.json size."""

    def __init__(self, path):
        size = json.loads((Path(path) / "video_preprocessor_config.json").read_text())["size"]
        self.height, self.width = size["height"], size["width"]

    def __call__(self, videos, **kwargs) -> dict:
        (frames,) = videos
        return {"pixel_values_videos": upstream_pixel_values_videos(frames, self.height, self.width)}


def reference_video_inputs(path, processor, messages: list[dict], frames: list, images: list | None = None) -> dict:
    """Like reference_inputs with a video content part: the rendered template through the processor's own
    __call__ (its replace_video_token expanding <video>, its image path), the video processor transcribed."""
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    processor.video_processor = TranscribedVideoProcessor(path)
    try:
        out = processor(text=[text], images=images or None, videos=[frames], return_tensors="np")
    finally:
        processor.video_processor = None
    return {"text": text, **{k: np.asarray(v) for k, v in out.items()}}
