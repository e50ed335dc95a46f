"""Batched SQL generation (greedy, or several beam or sampled candidates per prompt), with batches
sized by a token budget."""

from __future__ import annotations

from sqltune.config import EvaluateParams

# On CPU memory is rarely the limit but large padded batches stop paying off on a few cores;
# about 16 prompts of the embedded set (the old fixed batch size) per batch.
CPU_BATCH_TOKENS = 4096
# Share of the free GPU memory (measured after the weights are loaded) that `auto` hands to the
# KV cache and the prefill activations; the rest absorbs the allocator's fragmentation and logits.
AUTO_MEMORY_FRACTION = 0.8


def device_of(model):
    return next(model.parameters()).device


def render_prompts(tok, prompts: list[list[dict]]) -> list[str]:
    return [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]


def bytes_per_token(config, dtype_bytes: int) -> int:
    """GPU memory one token of a batch costs: its K and V in every layer, which live for the whole
    call, plus one layer's prefill activations (no grad: only one layer's are alive at a time)."""
    c = config.get_text_config()
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    kv = 2 * c.num_hidden_layers * kv_heads * head_dim
    prefill = 4 * c.hidden_size + 3 * getattr(c, "intermediate_size", 4 * c.hidden_size)
    return (kv + prefill) * dtype_bytes


def token_budget(model, batch_tokens: int | str) -> int:
    """evaluate.batch_tokens resolved: `auto` fits the card the weights are on, after loading."""
    if batch_tokens != "auto":
        return int(batch_tokens)
    device = device_of(model)
    if device.type != "cuda":
        return CPU_BATCH_TOKENS
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(free * AUTO_MEMORY_FRACTION) // bytes_per_token(model.config, model.dtype.itemsize))


def plan_batches(lengths: list[int], max_new_tokens: int, budget: int, max_batch_size: int,
                 row_tokens: int | None = None) -> list[list[int]]:
    """Prompt indices per batch, longest first, so each batch pads little. A batch takes as many
    prompts as fit the budget at its longest (first) prompt's length plus the new tokens, or at
    `row_tokens` when every row costs the same (a static cache is allocated at full length)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches, start = [], 0
    while start < len(order):
        row = row_tokens or lengths[order[start]] + max_new_tokens
        n = max(1, min(max_batch_size, budget // row))
        batches.append(order[start:start + n])
        start += n
    return batches


def candidate_ids(model, tok, prompts: list[list[dict]], e: EvaluateParams, desc: str | None = None,
                  decoding: str = "greedy", seed: int = 0) -> list[list[list[int]]]:
    """New token ids per prompt, in input order, up to and including EOS: one sequence per prompt
    for greedy decoding, e.num_candidates for `beam` (best first) and `sample`.

    Padding goes on the left so every sequence's next token sits at the same position; each
    sequence stops at EOS on its own (the batch runs until all have stopped or the cap).
    ``desc`` names a progress bar over the prompts (none without it).
    """
    import torch
    from tqdm.auto import tqdm

    if not prompts:
        return []
    n = 1 if decoding == "greedy" else e.num_candidates
    # The chat template already holds the special tokens; don't add a second BOS.
    ids = tok(render_prompts(tok, prompts), add_special_tokens=False)["input_ids"]
    lengths = [len(x) for x in ids]
    static = e.cache == "static" and n == 1  # several candidates per prompt: dynamic cache
    # A static cache is sized once for the longest prompt, and every batch gets the same number of
    # rows, so a compiled decoding step sees one shape and is compiled (and graph-captured) once.
    row_tokens = max(lengths) + e.max_new_tokens if static else None
    # Each prompt of a batch decodes n sequences: the budget is shared among them.
    batches = plan_batches(lengths, e.max_new_tokens, max(1, token_budget(model, e.batch_tokens) // n),
                           max(1, e.max_batch_size // n), row_tokens)
    extra = {"do_sample": False}
    if static:
        extra.update(cache_implementation="static", max_cache_len=row_tokens, disable_compile=not e.compile)
    if decoding == "beam":
        extra.update(num_beams=n, num_return_sequences=n, early_stopping=True)
    elif decoding == "sample":
        # top_k/top_p off: the model's generation_config must not narrow the samples unseen
        extra.update(do_sample=True, num_return_sequences=n, temperature=e.temperature, top_k=0, top_p=1.0)
        torch.manual_seed(seed)  # the same params draw the same samples (batches are deterministic)
    tok.padding_side = "left"
    outputs: list[list[list[int]]] = [[] for _ in ids]
    eos = model.generation_config.eos_token_id
    model.eval()
    bar = tqdm(total=len(ids), desc=desc, unit="row", disable=desc is None, mininterval=1.0)
    for idx in batches:
        rows = idx + [idx[-1]] * (len(batches[0]) - len(idx)) if static else idx  # pad the last batch
        batch = tok.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(device_of(model))
        # no_grad, not inference_mode: inference tensors (the cache, the inputs) beside normal ones
        # (the weights) make torch.compile's guards fail and recompile (pytorch/pytorch#134249).
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=e.max_new_tokens, pad_token_id=tok.pad_token_id, **extra)
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        for k, i in enumerate(idx):  # generate returns a prompt's n sequences next to each other
            outputs[i] = [until_eos(x, eos) for x in new[k * n:(k + 1) * n]]
        bar.update(len(idx))
    bar.close()
    return outputs


def until_eos(ids: list[int], eos: int | list[int] | None) -> list[int]:
    """The tokens a sequence really generated: up to its first EOS, inclusive (then only padding)."""
    stops = set(eos if isinstance(eos, list) else [eos])
    return next((ids[:k + 1] for k, t in enumerate(ids) if t in stops), ids)


def generate_ids(model, tok, prompts: list[list[dict]], e: EvaluateParams, desc: str | None = None) -> list[list[int]]:
    """Greedy new token ids per prompt, in input order, up to and including EOS."""
    return [x[0] for x in candidate_ids(model, tok, prompts, e, desc)]


def generate(model, tok, prompts: list[list[dict]], e: EvaluateParams, desc: str | None = None) -> list[str]:
    """Greedy completions, in input order, batched as evaluate.* says."""
    return [tok.decode(x, skip_special_tokens=True).strip() for x in generate_ids(model, tok, prompts, e, desc)]


def generate_candidates(model, tok, prompts: list[list[dict]], e: EvaluateParams, decoding: str,
                        seed: int = 0, desc: str | None = None) -> list[list[str]]:
    """e.num_candidates completions per prompt (``decoding``: beam or sample), in input order."""
    return [[tok.decode(c, skip_special_tokens=True).strip() for c in x]
            for x in candidate_ids(model, tok, prompts, e, desc, decoding, seed)]
