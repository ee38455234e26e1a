"""Post-training quantization (ModelOpt FP8 / NVFP4 / INT8-SQ / INT4-AWQ), export for TensorRT-LLM, verification,
and the quantize stage (`compactlm.quantize.stage`).

    model = ptq.quantize(model, calib, "fp8", kv_cache_fp8=True, exclude=["*lm_head*"], batch_size=4, device="cpu")
    metrics = verify.fake_quant_quality(model, validation, "fp8", 8, "cpu", reference=teacher)   # before export
    sizes = ptq.export(model, tokenizer, out_dir)                    # consumes the model
    verify.check_layout(out_dir, "fp8", kv_cache_fp8=True)           # raises LayoutError
    report = verify.compare(out_dir, reference_state_dict)           # report["passed"], report["rows"]

`formats` (which format runs and serves where) imports neither torch nor ModelOpt: config validation reads it.
"""
