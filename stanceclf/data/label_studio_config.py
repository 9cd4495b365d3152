"""The Label Studio labelling configuration of a label schema, generated from the schema.

One ``<Labels>`` control with one ``<Label>`` per schema label (its definition as the hover
``hint``) over one ``<Text>`` object. The names below are what the pre-annotations of
:mod:`stanceclf.infer.suggest` and the Label Studio reader expect, so they live here once.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

from stanceclf.data.schema import LabelSchema

#: ``name`` of the ``<Labels>`` control: ``from_name`` of every result, and the key of the spans in JSON_MIN.
LABELS_CONTROL = "label"
#: ``name`` of the ``<Text>`` object: ``to_name`` of every result.
TEXT_OBJECT = "text"
#: The task data key that holds the document text.
TEXT_FIELD = "text"


def labelling_config(schema: LabelSchema, *, text_field: str = TEXT_FIELD) -> str:
    """The ``<View>`` XML a Label Studio project takes as its labelling configuration."""
    view = ElementTree.Element("View")
    header = f"{schema.name} v{schema.version}: mark each sentence with every label it takes (hover a label " \
             "for its definition); a sentence without a mark is a negative for every label."
    ElementTree.SubElement(view, "Header", value=header)
    labels = ElementTree.SubElement(view, "Labels", name=LABELS_CONTROL, toName=TEXT_OBJECT)
    for label in schema.labels:
        # Definitions are wrapped TOML strings: one line reads better in a tooltip.
        ElementTree.SubElement(labels, "Label", value=label.name, hint=" ".join(label.definition.split()))
    ElementTree.SubElement(view, "Text", name=TEXT_OBJECT, value=f"${text_field}")
    ElementTree.indent(view)
    return ElementTree.tostring(view, encoding="unicode")
