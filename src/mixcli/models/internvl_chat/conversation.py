"""The conversation templates InternVL checkpoints name in config.json's `template` (their conversation.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import CheckpointError

INTERNVL2_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
INTERNVL2_5_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"


@dataclass(frozen=True)
class Template:
    """A SeparatorStyle.MPT conversation: system + sep, then role + message + sep per turn."""

    name: str
    system_template: str
    system_message: str
    roles: tuple[str, str]
    sep: str

    def prompt(self, turns: list[tuple[str, str | None]]) -> str:
        """turns: (user, assistant) pairs; the last assistant is None (to be generated)."""
        text = self.system_template.format(system_message=self.system_message) + self.sep
        for user, assistant in turns:
            text += self.roles[0] + user + self.sep
            text += self.roles[1] + (assistant + self.sep if assistant else "")
        return text

    @property
    def stop_token(self) -> str:
        """Upstream stops on tokenizer.convert_tokens_to_ids(template.sep.strip())."""
        return self.sep.strip()


IM_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")
TEMPLATES = {
    t.name: t
    for t in [
        Template("Hermes-2", "<|im_start|>system\n{system_message}", INTERNVL2_SYSTEM, IM_ROLES, "<|im_end|>"),
        Template("internlm2-chat", "<|im_start|>system\n{system_message}", INTERNVL2_SYSTEM, IM_ROLES, "<|im_end|>"),
        Template("phi3-chat", "<|system|>\n{system_message}", INTERNVL2_SYSTEM, ("<|user|>\n", "<|assistant|>\n"), "<|end|>"),
        Template("internvl2_5", "<|im_start|>system\n{system_message}", INTERNVL2_5_SYSTEM, IM_ROLES, "<|im_end|>\n"),
    ]
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise CheckpointError(
            f"unknown conversation template '{name}' in config.json",
            f"supported templates: {', '.join(TEMPLATES)}",
        )
    return TEMPLATES[name]
