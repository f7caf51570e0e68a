"""What the simulator's front end is made of, from its settings: the model family's chat
format, the tokenizer that renders it, and the server flags that change how requests are
checked. One place, so the HTTP server and the in-process client answer alike."""

from __future__ import annotations

from dataclasses import dataclass

from gantry.sim.chat_format import FORMATS, ChatFormat, family_of, for_model
from gantry.sim.settings import ResolvedSim
from gantry.sim.tokenizer import Tokenizer, load_tokenizer
from gantry.sim.validate import ServerOptions


@dataclass(frozen=True, slots=True)
class Frontend:
    chat_format: ChatFormat
    tokenizer: Tokenizer
    options: ServerOptions


def frontend(resolved: ResolvedSim) -> Frontend:
    s = resolved.settings
    chat = FORMATS[family_of(resolved.model.name, resolved.model.hf_id)]
    tok = for_model(load_tokenizer(s.tokenizer), chat, resolved.model.vocab_size)
    opts = ServerOptions(
        auto_tools=s.enable_auto_tool_choice,
        tool_parser=s.tool_call_parser,
        max_logprobs=s.max_logprobs,
        chat=chat,
    )
    return Frontend(chat, tok, opts)
