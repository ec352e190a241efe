"""Structured outputs (constrained decoding) through xgrammar, one idea a file:

- tokenizer_info.py  the model's vocabulary as the grammar engine sees it (any HF tokenizer,
                     the synthetic word-level one included)
- compiler.py        GrammarCompiler: StructuredOutputsParams -> a compiled grammar on a worker
                     thread, cached by (kind, spec) so a schema compiles once
- matcher.py         RequestGrammar: one sequence's matcher state (fills its bitmask row, advances
                     on accepted tokens)
- bitmask.py         apply_token_bitmask: the batch's token bitmask applied to the logits on the
                     device (one torch op, CPU and CUDA alike)

Why xgrammar and not llguidance (both installed and measured on the demo tokenizer, CPU): the
per-token mask, which sits on every step's path, took 1.5-3.0 us with xgrammar against 7-8 us
with llguidance; compilation, which sits off the step path and is cached, took 2-7 ms against
1.4-2.3 ms. vLLM's default and SGLang's backend is xgrammar, too.
"""
