"""The TrainingJob API: typed models parsed at the boundary, and its constants.

Pure: no I/O. The CRD in crds/ is the source of truth; tests check these
models against it field by field.
"""
