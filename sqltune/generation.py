"""Batched, deterministic (greedy) SQL generation."""

from __future__ import annotations


def device_of(model):
    return next(model.parameters()).device


def render_prompts(tok, prompts: list[list[dict]]) -> list[str]:
    return [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]


def generate(model, tok, prompts: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions, in input order.

    Prompts are sorted by length so each batch pads little; padding goes on the left so every
    sequence's next token sits at the same position. Each sequence stops at EOS on its own.
    """
    import torch

    texts = render_prompts(tok, prompts)
    # The chat template already holds the special tokens; don't add a second BOS.
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
    tok.padding_side = "left"
    outputs: list[str] = [""] * len(texts)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt").to(device_of(model))
        with torch.inference_mode():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, batch["input_ids"].shape[1]:]
        for i, text in zip(idx, tok.batch_decode(new, skip_special_tokens=True)):
            outputs[i] = text.strip()
    return outputs
