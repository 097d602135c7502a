"""anygpt-jax: training AnyGPT-style any-to-any multimodal language models on JAX.

One installed package, `anygpt_jax`, holds everything: the library, the commands (the repository's
`tools/` installed as `anygpt_jax.tools`), the instruction pools (`tasks/` as `anygpt_jax.tasks`)
and the gin files (`gin/` as data under `anygpt_jax/gin`). The repository keeps `tools/`, `tasks/`
and `gin/` at its top level as the sources; nothing is installed as a top-level `tools` or `tasks`.

Dependencies by role (requirements-<role>.in): `train` (the JAX/SeqIO/TensorFlow trainer, no
torch), `tokenize` (the PyTorch tokenizers, no JAX/TensorFlow/SeqIO), `tpu` (libtpu), `demo`
(both roles), `serve` (the demo set and the HTTP front), `test`, and `dev` (everything).
"""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent
# Source directory -> installed package, for the parts that live outside anygpt_jax/.
PACKAGE_DIRS = {"anygpt_jax.tools": "tools", "anygpt_jax.tasks": "tasks", "anygpt_jax.gin": "gin"}


def _requirements(name: str) -> list[str]:
  """The requirement lines of requirements-{name}.in; `-r` includes are left to the extras below."""
  lines = (HERE / f"requirements-{name}.in").read_text().splitlines()
  return [l.split("#")[0].strip() for l in lines if l.split("#")[0].strip() and not l.startswith("-")]


_EXTRAS = {role: _requirements(role) for role in ("train", "tokenize", "tpu", "test")}
_EXTRAS["demo"] = list(dict.fromkeys(_EXTRAS["train"] + _EXTRAS["tokenize"] + _requirements("demo")))
_EXTRAS["serve"] = list(dict.fromkeys(_EXTRAS["demo"] + _requirements("serve")))
_EXTRAS["dev"] = sorted(set(_EXTRAS["serve"] + _EXTRAS["tpu"] + _EXTRAS["test"]))

setuptools.setup(
    name="anygpt-jax",
    version="0.1.0",
    description="AnyGPT-style multimodal LLaMA-2 training on JAX: model, SeqIO data, tokenizers, trainer, export.",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["anygpt_jax", "anygpt_jax.*"]) + list(PACKAGE_DIRS),
    package_dir={"anygpt_jax": "anygpt_jax", **PACKAGE_DIRS},
    package_data={"anygpt_jax.tasks": ["instructions/*.txt"], "anygpt_jax.gin": ["**/*.gin"],
                  "anygpt_jax.serving": ["chat.html"]},
    install_requires=_requirements("base"),
    extras_require=_EXTRAS,
    entry_points={
        "console_scripts": [
            "anygpt-vocab=anygpt_jax.tools.vocab:main",
            "anygpt-model-check=anygpt_jax.tools.model_check:main",
            "anygpt-tokenize=anygpt_jax.tools.tokenize_media:main",
            "anygpt-mixture-report=anygpt_jax.tools.mixture_report:main",
            "anygpt-train=anygpt_jax.tools.train:main",
            "anygpt-export=anygpt_jax.tools.export_hf:main",
            "anygpt-import=anygpt_jax.tools.import_weights:main",
            "anygpt-demo=anygpt_jax.tools.demo:main",
            "anygpt-compile=anygpt_jax.tools.compile:main",
            "anygpt-generate=anygpt_jax.tools.generate:main",
            "anygpt-eval=anygpt_jax.tools.eval:main",
            "anygpt-serve=anygpt_jax.tools.serve:main",
        ]
    },
)
