"""The original LLaVA repos' layout (liuhaotian/llava-v1.5-7b: LlavaLlamaForCausalLM) read into the llava-hf
model: config.json's flat Llama fields and mm_* settings; model.* / lm_head.* / model.mm_projector.{0,2}.* names;
the CLIP tower from the checkpoint mm_vision_tower names (its weights, unless this checkpoint carries them as
model.vision_tower.vision_tower.*, its config.json and preprocessor_config.json); the SentencePiece
tokenizer.model; the llava_v1 conversation and tokenizer_image_token's chunked tokenization (llava/mm_utils.py)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from ...errors import CheckpointError, MixError
from ...layers import build_for_inference
from ...tokenizer import TextTokenizer
from ...weights import Checkpoint, open_checkpoint, rename
from ..base import VisionLanguageModel
from .config import LlavaConfig
from .model import FAMILY_NAMES, Llava, LlavaNet, Prompt, generation_eos, sanitize
from .processing import ProcessorConfig, image_token_count

IMAGE_TOKEN_INDEX = -200  # llava/constants.py: the id tokenizer_image_token puts where an image goes
# conv_templates["llava_v1"] (conv_vicuna_v1): SeparatorStyle.TWO with sep " " and sep2 "</s>".
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the human's questions.")  # fmt: skip
ROLES, SEPS = ("USER", "ASSISTANT"), (" ", "</s>")
# The mm_* settings and the other LLaVA-only fields: not Llama's.
LLAVA_FIELDS = ("mm_", "tune_", "freeze_", "unfreeze_", "image_aspect_ratio", "use_mm_proj", "architectures")
NAMES = [
    (r"^model\.mm_projector\.0\.", "multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "multi_modal_projector.linear_2."),
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "vision_tower.vision_model."),
    (r"^model\.(?!vision_tower\.|multi_modal_projector\.)", "language_model.model."),
    (r"^lm_head\.", "language_model.lm_head."),
]
# A CLIPModel checkpoint (openai/clip-vit-large-patch14-336) holds the text side too.
TOWER_NAMES = [(r"^(?!vision_model\.)", None), (r"^vision_model\.", "vision_tower.vision_model.")]


def is_original(config: dict) -> bool:
    """config.json of the original code (flat Llama fields, mm_vision_tower) rather than llava-hf's."""
    return "mm_vision_tower" in config and "text_config" not in config


def tower_folder(config: dict) -> Path:
    """The vision tower checkpoint mm_vision_tower names: a local folder, else its download in mix's cache."""
    from ...hub import local_model_dir

    name = config["mm_vision_tower"]
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    found = local_model_dir(name) if "/" in name and not local.is_absolute() else None
    if found is None:
        raise MixError(f"the vision tower {name} that config.json names (mm_vision_tower) is not downloaded",
                       f"run `mix download {name}`")  # fmt: skip
    return found


def hf_config(config: dict, tower: Path) -> dict:
    """The llava-hf config.json this checkpoint stands for (LlavaConfig with a Llama text_config)."""
    projector = config.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise CheckpointError(f"mm_projector_type '{projector}' is not supported yet", "supported: mlp2x_gelu (LLaVA-1.5)")
    select = config.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise CheckpointError(f"mm_vision_select_feature '{select}' is unknown", "expected patch or cls_patch")
    tower_config = json.loads((tower / "config.json").read_text(encoding="utf-8"))
    vision = {"model_type": "clip_vision_model", **tower_config.get("vision_config", tower_config)}
    text = {k: v for k, v in config.items() if not k.startswith(LLAVA_FIELDS)}
    return {"model_type": "llava", "text_config": {**text, "model_type": "llama"}, "vision_config": vision,
            "vision_feature_layer": config.get("mm_vision_select_layer", -2),
            "vision_feature_select_strategy": "default" if select == "patch" else "full",
            "image_token_index": IMAGE_TOKEN_INDEX, "tie_word_embeddings": bool(config.get("tie_word_embeddings"))}  # fmt: skip


def checkpoint(path: Path, tower: Path, allow_pickle: bool = False) -> Checkpoint:
    """This checkpoint's tensors under llava-hf's names, the tower's from its own checkpoint unless here."""
    own = rename(open_checkpoint(path, allow_pickle=allow_pickle), NAMES)
    if any(name.startswith("vision_tower.") for name in own):
        return own
    theirs = rename(open_checkpoint(tower, allow_pickle=allow_pickle), TOWER_NAMES)
    if theirs.layout != own.layout:
        raise CheckpointError(f"{path} and its vision tower {tower} come in different layouts",
                              "use the PyTorch checkpoints of both")  # fmt: skip
    return own.replace({**dict(own.items()), **dict(theirs.items())})


def conversation(turns: list[tuple[str, str | None]], n_images: int) -> str:
    """Conversation.get_prompt of llava_v1 for the turns, the images ("<image>\\n") before the first question
    unless <image> markers place them (as the model builder's DEFAULT_IMAGE_TOKEN + '\\n' + qs)."""
    placed = sum(q.count("<image>") for q, _ in turns)
    if placed and placed != n_images:
        raise MixError(f"the question has {placed} <image> markers for {n_images} images",
                       "use one <image> per image, or none to put the images before the question")  # fmt: skip
    text = SYSTEM + SEPS[0]
    for i, (question, answer) in enumerate(turns):
        if i == 0 and n_images and not placed:
            question = "<image>\n" * n_images + question
        text += f"{ROLES[0]}: {question}{SEPS[0]}"
        text += f"{ROLES[1]}: {answer}{SEPS[1]}" if answer is not None else f"{ROLES[1]}:"
    return text


def image_token_ids(text: str, encode, bos: int | None) -> list[int]:
    """tokenizer_image_token: each piece between <image> markers tokenized on its own (with bos), one bos kept
    at the front, IMAGE_TOKEN_INDEX where each image goes."""
    chunks = [encode(chunk) for chunk in text.split("<image>")]
    offset = 1 if chunks and chunks[0] and chunks[0][0] == bos else 0
    ids = chunks[0][:offset]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def load_original(path: Path, config: dict, dtype: str = "float32", allow_pickle: bool = False,
                  adapter=None) -> "OriginalLlava":  # fmt: skip
    """Build the llava-hf network from the original checkpoint and its vision tower."""
    if adapter is not None:
        raise MixError("adapters on the original LLaVA layout are not supported yet",
                       "use the llava-hf checkpoint (e.g. llava-1.5-7b) with --adapter")  # fmt: skip
    tower = tower_folder(config)
    cfg = LlavaConfig.from_dict(hf_config(config, tower))
    processor = ProcessorConfig.from_dir(tower, cfg)
    processor.do_pad = config.get("image_aspect_ratio") == "pad"  # expand2square with the mean colour
    weights = checkpoint(Path(path), tower, allow_pickle)
    net = build_for_inference(lambda: LlavaNet(cfg), sanitize(weights, cfg), dtype, weights.layout)
    net.language_model.fuse()
    return OriginalLlava(net, TextTokenizer.from_dir(path), Path(path), processor)


class OriginalLlava(Llava):
    """An original-layout LLaVA-1.5: the llava_v1 conversation and tokenizer_image_token's ids."""

    def __init__(self, net: LlavaNet, tokenizer: TextTokenizer, path: Path, processor: ProcessorConfig):
        VisionLanguageModel.__init__(self, net, tokenizer, path, net.config.text.max_position_embeddings)
        self.family, self.processor = FAMILY_NAMES["llava"], processor
        self.eos_ids = generation_eos(self.path)
        self.image_token = IMAGE_TOKEN_INDEX

    def prepare(self, turns: list[tuple[str, str | None]], images: list[Image.Image], video=None) -> Prompt:
        """The llava_v1 prompt's ids, each image's IMAGE_TOKEN_INDEX repeated for the features it takes."""
        if video is not None:
            raise MixError(f"{self.family} models take no video", "pass frames as images instead")
        prompt = self.pixels(images)
        prompt.text = conversation(turns, len(images))
        ids = image_token_ids(prompt.text, self.tokenizer.encode, self.tokenizer.token_id("<s>"))
        counts = iter([image_token_count(size, tiles.shape[-2:], self.processor, "llava", False)
                       for size, tiles in zip(prompt.image_sizes, prompt.pixel_values)])  # fmt: skip
        expanded = [t for i in ids for t in ([i] * next(counts) if i == IMAGE_TOKEN_INDEX else [i])]
        prompt.ids = self.check_context(expanded, "use fewer images, or a shorter question")
        return prompt
