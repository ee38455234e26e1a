# compactlm deploy image: the deploy stage (TensorRT-LLM LLM API and trtllm-bench on ModelOpt's unified
# checkpoints), on NVIDIA's TensorRT-LLM release container. Build and use it as containers/README.md says:
#   docker build -f containers/deploy.Dockerfile -t compactlm-deploy:latest .
#   python launch.py recipe=prune_distill_deploy cluster=slurm cluster.deploy_image=<registry>/compactlm-deploy:latest ...
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt-llm/release:1.2.0
FROM ${BASE_IMAGE}

# TensorRT-LLM pins its own torch and transformers: compactlm goes in without dependencies, plus the small
# packages the stage entry point needs to read its config and write its manifest.
COPY pyproject.toml README.md /opt/compactlm/
COPY src /opt/compactlm/src
COPY recipes /opt/compactlm/recipes
COPY conf /opt/compactlm/conf
COPY launch.py /opt/compactlm/
RUN pip install --no-cache-dir --no-deps -e /opt/compactlm \
 && pip install --no-cache-dir "omegaconf>=2.3,<2.4" \
 && python -c "import compactlm.deploy.trtllm as d, tensorrt_llm; print('compactlm deploy ok, TensorRT-LLM', d.tensorrt_llm_available())"

ENV PYTHONUNBUFFERED=1
WORKDIR /opt/compactlm
