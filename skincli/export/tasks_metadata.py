"""TFLite Model Metadata for an image classifier, written straight into the flatbuffer.

What MediaPipe Tasks' ImageClassifier (Android, iOS, web, Python) reads from a model: name,
version and description; the input image's colour space and NormalizationOptions (how to turn
0..255 pixels into the tensor); the output's score range and its labels as an associated
`TENSOR_AXIS_LABELS` file. Associated files travel as an uncompressed zip appended to the
flatbuffer (the layout the metadata readers expect).

Why the flatbuffer directly: mediapipe's `metadata_writers` import a compiled module its wheel
lacks (`_pywrap_metadata_version`, asked only for the minimum parser version). The generated
schema modules the wheel does carry are all the writing needs, and the parser version is fixed
here: every field used is from metadata schema 1.0.0.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from skincli.errors import SkinError

METADATA_NAME = "TFLITE_METADATA"  # the model's metadata entry the readers look up
MIN_PARSER_VERSION = "1.0.0"  # nothing newer is used (see the schema's history)
LABELS_FILE = "labels.txt"
INSTALL_HINT = "Install the export extra: pip install 'skincli[export]' (adds mediapipe)"


@dataclass
class ClassifierMetadata:
    """What goes into the model's metadata."""

    name: str
    version: str
    description: str
    author: str
    labels: Sequence[str]
    input_description: str
    output_description: str
    mean: float = 0.0
    std: float = 1.0
    files: Mapping[str, bytes] = field(default_factory=dict)  # model-level associated files
    file_descriptions: Mapping[str, str] = field(default_factory=dict)


def schemas() -> tuple[Any, Any]:
    """(metadata schema, TFLite model schema) generated modules from the mediapipe wheel."""
    try:
        from mediapipe.tasks.metadata import metadata_schema_py_generated as md
        from mediapipe.tasks.metadata import schema_py_generated as tfl
    except ImportError:
        raise SkinError("Writing TFLite Model Metadata needs mediapipe", hint=INSTALL_HINT
                        ) from None
    return md, tfl


def _metadata_buffer(meta: ClassifierMetadata) -> bytes:
    import flatbuffers

    md, _ = schemas()
    image = md.TensorMetadataT()
    image.name = "image"
    image.description = meta.input_description
    image.content = md.ContentT()
    image.content.contentPropertiesType = md.ContentProperties.ImageProperties
    image.content.contentProperties = md.ImagePropertiesT()
    image.content.contentProperties.colorSpace = md.ColorSpaceType.RGB
    norm = md.ProcessUnitT()
    norm.optionsType = md.ProcessUnitOptions.NormalizationOptions
    norm.options = md.NormalizationOptionsT()
    norm.options.mean, norm.options.std = [float(meta.mean)], [float(meta.std)]
    image.processUnits = [norm]
    image.stats = md.StatsT()
    image.stats.min = [(0.0 - meta.mean) / meta.std]
    image.stats.max = [(255.0 - meta.mean) / meta.std]

    probs = md.TensorMetadataT()
    probs.name = "probabilities"
    probs.description = meta.output_description
    probs.content = md.ContentT()
    probs.content.contentPropertiesType = md.ContentProperties.FeatureProperties
    probs.content.contentProperties = md.FeaturePropertiesT()
    probs.stats = md.StatsT()
    probs.stats.min, probs.stats.max = [0.0], [1.0]
    labels = md.AssociatedFileT()
    labels.name = LABELS_FILE
    labels.description = "The class names, one a line, in output order."
    labels.type = md.AssociatedFileType.TENSOR_AXIS_LABELS
    probs.associatedFiles = [labels]

    graph = md.SubGraphMetadataT()
    graph.inputTensorMetadata = [image]
    graph.outputTensorMetadata = [probs]
    model = md.ModelMetadataT()
    model.name, model.version = meta.name, meta.version
    model.description, model.author = meta.description, meta.author
    model.subgraphMetadata = [graph]
    model.minParserVersion = MIN_PARSER_VERSION
    extra = []
    for name in meta.files:
        f = md.AssociatedFileT()
        f.name = name
        f.description = meta.file_descriptions.get(name, "")
        f.type = md.AssociatedFileType.DESCRIPTIONS
        extra.append(f)
    model.associatedFiles = extra or None
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), b"M001")
    return bytes(b.Output())


def with_metadata(model_bytes: bytes, meta: ClassifierMetadata) -> bytes:
    """The .tflite bytes with `meta` in the flatbuffer and the files appended as a zip."""
    import flatbuffers

    _, tfl = schemas()
    model = tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(model_bytes, 0))
    if len(model.subgraphs or []) != 1 or len(model.subgraphs[0].inputs) != 1 \
            or len(model.subgraphs[0].outputs) != 1:
        raise SkinError("The app model must have one input and one output",
                        hint="This is a bug in the export; please report it")
    buf = tfl.BufferT()
    buf.data = list(_metadata_buffer(meta))
    model.buffers = list(model.buffers or []) + [buf]
    entry = tfl.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()
                      ] + [entry]
    b = flatbuffers.Builder(0)
    b.Finish(model.Pack(b), b"TFL3")
    out = io.BytesIO()
    out.write(bytes(b.Output()))
    files = {LABELS_FILE: ("\n".join(meta.labels) + "\n").encode("utf-8"), **meta.files}
    # Stored, not deflated: the readers map the files straight out of the model buffer.
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


def read_metadata(model_bytes: bytes) -> dict[str, Any]:
    """The metadata fields and associated files of a .tflite (for checks and tests)."""
    md, tfl = schemas()
    model = tfl.Model.GetRootAsModel(model_bytes, 0)
    index = next((model.Metadata(i).Buffer() for i in range(model.MetadataLength())
                  if model.Metadata(i).Name() == METADATA_NAME.encode()), None)
    if index is None:
        return {}
    data = model.Buffers(index).DataAsNumpy().tobytes()
    meta = md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAsModelMetadata(data, 0))
    graph = meta.subgraphMetadata[0]
    image, probs = graph.inputTensorMetadata[0], graph.outputTensorMetadata[0]
    norm = image.processUnits[0].options
    with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    return {
        "name": meta.name.decode(), "version": meta.version.decode(),
        "description": meta.description.decode(),
        "min_parser_version": meta.minParserVersion.decode(),
        "mean": list(norm.mean), "std": list(norm.std),
        "colour_space": image.content.contentProperties.colorSpace,
        "label_file": [(f.name.decode(), f.type) for f in probs.associatedFiles],
        "model_files": [f.name.decode() for f in meta.associatedFiles or []],
        "files": files,
    }
