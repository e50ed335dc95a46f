from sqltune.generation import generate


def test_batched_equals_unbatched_greedy(tiny_model_dir):
    """Left padding and length bucketing must not change greedy answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    questions = ["How many?", "List every name of every singer older than forty, please.", "Max age?",
                 "Which concerts took place in 2014 or later, sorted by year?", "Count rows."]
    prompts = [[{"role": "system", "content": "CREATE TABLE singer (name VARCHAR, age INTEGER)"},
                {"role": "user", "content": q}] for q in questions]
    one_by_one = generate(model, tok, prompts, max_new_tokens=12, batch_size=1)
    batched = generate(model, tok, prompts, max_new_tokens=12, batch_size=4)
    assert batched == one_by_one
    assert all(one_by_one) and len(set(one_by_one)) > 1  # real, prompt-dependent outputs
