"""anygpt-jax: training AnyGPT-style any-to-any multimodal language models on JAX."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent


def _requirements(name="requirements.in"):
  lines = (HERE / name).read_text().splitlines()
  return [l.strip() for l in lines if l.strip() and not l.startswith("#") and l.strip() != "pytest"]


setuptools.setup(
    name="anygpt-jax",
    version="0.1.0",
    description="AnyGPT-style multimodal LLaMA-2 training on JAX: model, SeqIO data, tokenizers, trainer, export.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["anygpt_jax", "anygpt_jax.*", "tasks", "tasks.*", "tools", "tools.*"]),
    package_data={"tasks": ["instructions/*.txt"]},
    install_requires=_requirements(),
    extras_require={"test": ["pytest"], "tpu": _requirements("requirements-tpu.in")},
    entry_points={
        "console_scripts": [
            "anygpt-vocab=tools.vocab:main",
            "anygpt-model-check=tools.model_check:main",
            "anygpt-tokenize=tools.tokenize_media:main",
            "anygpt-mixture-report=tools.mixture_report:main",
            "anygpt-train=tools.train:main",
            "anygpt-export=tools.export_hf:main",
            "anygpt-import=tools.import_weights:main",
            "anygpt-demo=tools.demo:main",
            "anygpt-compile=tools.compile:main",
            "anygpt-generate=tools.generate:main",
        ]
    },
)
