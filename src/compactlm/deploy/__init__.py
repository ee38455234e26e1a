"""TensorRT-LLM serving and trtllm-bench (`trtllm`; GPU, NVIDIA's TensorRT-LLM image only), and the deploy stage
(`compactlm.deploy.stage`). `trtllm` never imports TensorRT-LLM at module level, so the launcher can ask whether
it is installed."""
