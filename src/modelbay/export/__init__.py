"""`modelbay export`: a served PyTorch model to ONNX or a `torch.export` `.pt2`, proven by a numeric check.

    source.py   the model as `modelbay serve` loads it (loading/), with its input specs and examples
    capture.py  torch.export with a dynamic batch dimension (TorchScript converted first)
    targets.py  the program written as ONNX (the dynamo exporter) or .pt2, and loaded back as a Runner
    check.py    the original against the export on the same inputs, several batch sizes: max errors
    pick.py     with --pick: eager, torch.compile and the export timed; the fastest that passes
    manifest.py the winner recorded in the model folder's modelbay.yaml, comments kept

Nothing is written to the output path unless the export passes the check (it is staged beside it).
"""
