"""Slicer's own Segment Editor parameter node: where the user's masking and overwrite settings live.

Slicer keeps one vtkMRMLSegmentEditorNode per scene for its Segment Editor, a
singleton tagged "SegmentEditor" (Modules/Scripted/SegmentEditor/SegmentEditor.py,
selectParameterNode, Slicer 5.10). It is created when the Segment Editor is first
shown, so it may be absent; it is created here the same way, and the Segment
Editor then finds and uses this same node. Other segment editor nodes in the
scene (the module's own hidden one, another extension's) are never taken for it.
"""

SEGMENT_EDITOR_SINGLETON_TAG = "SegmentEditor"


def userSegmentEditorNode(scene, create=True):
    """The Segment Editor's vtkMRMLSegmentEditorNode of ``scene`` (singleton tag "SegmentEditor").

    create: add it, as Slicer's Segment Editor does, when the scene has none
    (a new node has Slicer's defaults: edit everywhere, overwrite all segments,
    no intensity range). Returns None only when create is False and there is none.
    """
    node = scene.GetSingletonNode(SEGMENT_EDITOR_SINGLETON_TAG, "vtkMRMLSegmentEditorNode")
    if node is None and create:
        node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)  # CreateNodeByClass returns a reference the caller owns (as SegmentEditor.py does)
        node.SetSingletonTag(SEGMENT_EDITOR_SINGLETON_TAG)
        node = scene.AddNode(node)
    return node
