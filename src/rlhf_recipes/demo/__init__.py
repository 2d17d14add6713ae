"""The embedded offline default: corpus, simulated labeler and tiny base model of the movie-review sentiment task.

`python -m rlhf_recipes.demo.build --output_dir runs/demo` writes everything `recipes/demo/*.yaml` points at.
"""
