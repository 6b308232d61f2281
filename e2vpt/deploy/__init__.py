"""Using what was trained, outside the studio: predict on new images, export an adapter, deploy as ONNX.

- `trained.py`: a run's model at one of its rounds, with its class names and preprocessing;
- `adapter.py`: `export_adapter` / `load_adapter`, peft's file names with E2VPT's pruning;
- `card.py`: the adapter's model card;
- `onnx_model.py`: the prompted, pruned model as ONNX, checked against onnxruntime;
- `predict.py`: class probabilities for image files, from a run or an adapter;
- `commands.py`: `python -m e2vpt predict` and `export`.
"""
