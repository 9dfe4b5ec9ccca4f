import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from engine.data.prompts import CHAT_INSTRUCTION, PLAIN_TEMPLATE, encode_prompt, render_prompt

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level tokenizer built offline that adds BOS to plain text, like Llama's."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)} | {"<s>": len(alphabet), "</s>": len(alphabet) + 1}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   chat_template=CHAT_TEMPLATE)


def test_plain_template_matches_the_synthetic_task():
    from engine.data import synthetic

    assert PLAIN_TEMPLATE == synthetic.PROMPT_TEMPLATE
    assert render_prompt("What is 2+2?", None, "plain") == "Question: What is 2+2?\nAnswer:"


def test_chat_uses_the_template_with_instruction_and_generation_prompt(tokenizer):
    text = render_prompt("What is 2+2?", tokenizer, "chat")
    assert text == f"<s><|user|>What is 2+2?{CHAT_INSTRUCTION}\n<|assistant|>"
    assert "####" in CHAT_INSTRUCTION
    with_system = render_prompt("What is 2+2?", tokenizer, "chat", system_prompt="Be brief.")
    assert with_system.startswith("<s><|system|>Be brief.\n<|user|>What is 2+2?")


def test_chat_without_template_is_a_clear_error(tokenizer):
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    with pytest.raises(ValueError, match="no chat template.*prompt_format=plain"):
        render_prompt("Q", bare, "chat")


def test_system_prompt_needs_chat_and_format_is_checked():
    with pytest.raises(ValueError, match="only used with data.prompt_format=chat"):
        render_prompt("Q", None, "plain", system_prompt="Be brief.")
    with pytest.raises(ValueError, match="allowed: plain, chat"):
        render_prompt("Q", None, "markdown")


def test_special_tokens_are_added_once(tokenizer):
    bos = tokenizer.bos_token_id
    plain = encode_prompt(render_prompt("Q", None, "plain"), tokenizer, "plain")
    chat = encode_prompt(render_prompt("Q", tokenizer, "chat"), tokenizer, "chat")
    assert plain[0] == bos and plain.count(bos) == 1
    assert chat[0] == bos and chat.count(bos) == 1  # from the template, not added again
    assert tokenizer.decode(plain, skip_special_tokens=True) == "Question: Q\nAnswer:"


def test_instruction_is_a_setting_and_may_be_empty(tokenizer):
    from engine.config import ConfigError, DataConfig

    assert DataConfig().instruction == CHAT_INSTRUCTION  # the default lives in the dataclass
    custom = render_prompt("What is 2+2?", tokenizer, "chat", instruction=" Answer with a number.")
    assert custom == "<s><|user|>What is 2+2? Answer with a number.\n<|assistant|>"
    assert render_prompt("What is 2+2?", tokenizer, "chat", instruction="") == "<s><|user|>What is 2+2?\n<|assistant|>"
    assert DataConfig(prompt_format="chat", instruction="").instruction == ""
    with pytest.raises(ConfigError, match="data.instruction: only read with data.prompt_format=chat"):
        DataConfig(prompt_format="plain", instruction="")


def test_ready_messages_render_as_written_with_the_system_prompt_first(tokenizer):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "What is 2+2?"}]
    text = render_prompt(messages, tokenizer, "chat")  # no instruction appended to ready messages
    assert text == "<s><|user|>Hi\n<|assistant|>Hello\n<|user|>What is 2+2?\n<|assistant|>"
    assert render_prompt(messages, tokenizer, "chat", system_prompt="Be brief.").startswith(
        "<s><|system|>Be brief.\n<|user|>Hi\n")
    own_system = [{"role": "system", "content": "Mine."}, *messages]
    assert render_prompt(own_system, tokenizer, "chat").startswith("<s><|system|>Mine.\n<|user|>Hi")
    with pytest.raises(ValueError, match="open with a system turn of their own"):
        render_prompt(own_system, tokenizer, "chat", system_prompt="Be brief.")
    with pytest.raises(ValueError, match="needs data.prompt_format=chat"):
        render_prompt(messages, None, "plain")
