"""Benchmarks: `octavo bench latency | throughput | serve | spec | kernels | report`.

Every run measures its anchors in the same process (HF transformers `generate` on the same model
shape and requests for latency and throughput; the device's copy bandwidth and matmul peak; served
TPOT against the in-process batch-1 step), so each figure is reported as a ratio to something
measured beside it. One module per idea:

- workload.py: seeded requests (token-id prompts, so dummy weights need no tokenizer)
- models.py: --model / --config -> a model directory; the octavo engine built from the flags
- measure.py: device-synchronized clocks, percentiles, progress bars, paired-ratio intervals
- latency.py: fixed batches, prefill time and ms per decode step
- throughput.py: offline, N requests of seeded random lengths
- serve.py: streaming OpenAI client at fixed concurrency levels (optionally launching the server)
- spec.py: paired, interleaved A/B of two live servers (spec / no-spec, or two versions) with a t interval
- pairs.py: the pairs spec serves (demo; controlled: calibrated acceptance, exported checkpoints)
- kernels.py: paged attention kernels against copy bandwidth and matmul peak (CUDA)
- trace.py: engine step traces (OCTAVO_STEP_TRACE) by batch size and kind of step
- hf_baseline.py: HF transformers `generate` in static, left-padded batches
- roofline.py: copy bandwidth, matmul peak and the floors they imply
- env.py: what every result records (device, versions, commit, command, date)
- report.py: JSON, Markdown and PNG outputs
"""
