# compactlm training image: every stage but deploy (model, data, importance, prune, distill, quantize, gguf,
# evaluate, bench), on NVIDIA's NeMo framework container (PyTorch, NCCL, Transformer Engine, Megatron-Bridge,
# ModelOpt come with the base). Build and import it for Slurm/pyxis as containers/README.md says:
#   docker build -f containers/train.Dockerfile -t compactlm-train:latest .
#   python launch.py cluster=slurm cluster.container_image=<registry>/compactlm-train:latest ...
ARG BASE_IMAGE=nvcr.io/nvidia/nemo:25.11
FROM ${BASE_IMAGE}

# The base's torch, CUDA and NCCL stay as they are: compactlm's own pins go in without dependencies,
# then only what the base lacks.
COPY pyproject.toml README.md /opt/compactlm/
COPY src /opt/compactlm/src
COPY recipes /opt/compactlm/recipes
COPY conf /opt/compactlm/conf
COPY launch.py /opt/compactlm/
RUN pip install --no-cache-dir --no-deps -e /opt/compactlm \
 && pip install --no-cache-dir "hydra-core==1.3.8" "omegaconf>=2.3,<2.4" "nemo-run==0.11.1" "leptonai==0.27.3" \
        "nvidia-modelopt==0.47.0" "transformers>=4.56,<5.15" "lm-eval==0.4.13" gguf sentencepiece safetensors matplotlib \
        tensorboard \
 && python -c "import compactlm.pipeline, modelopt.torch.distill, torch; print('compactlm ok, torch', torch.__version__)"

# The gguf stage builds llama.cpp (CMake, C++) once per CPU type into the run's cache_dir on first use; its
# sources come from the llama-cpp-python sdist, fetched here so that nodes without network need nothing.
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ ninja-build && rm -rf /var/lib/apt/lists/* \
 && pip download --no-cache-dir --no-deps --no-binary :all: "llama-cpp-python==0.3.36" -d /opt/llama-cpp-sdist

ENV PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false COMPACTLM_LLAMA_CPP_SDIST=/opt/llama-cpp-sdist/llama_cpp_python-0.3.36.tar.gz
WORKDIR /opt/compactlm
