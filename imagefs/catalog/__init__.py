"""The catalog: the tree the mount shows, without FUSE.

==============  ============================================================
``tree``        :class:`Catalog`: lookup, walk, shared resources
``scan``        mirrored directories: listing, symlink policy, piece sets
``entry``       :class:`ImageEntry`: one image's probe, lazy open, errors
``nodes``       the node protocol the FUSE adapter uses, and the file nodes
``naming``      display names (VNAME) and the clash rule
``attrs``       stat attributes and the owner/permission overrides
``scope``       include/exclude globs of a source
``infotext``    the text of ``VNAME.info`` and ``imagefs info``
==============  ============================================================
"""

from imagefs.catalog.attrs import Attr, AttrPolicy
from imagefs.catalog.entry import ImageEntry
from imagefs.catalog.naming import COMPRESSION_SUFFIXES, INFO_SUFFIX, virtual_name
from imagefs.catalog.nodes import (
                                   DirectoryNode,
                                   FileLikeNode,
                                   FileNode,
                                   ImageNode,
                                   InfoNode,
                                   LinkNode,
                                   Node,
                                   NoSuchAttribute,
                                   NotADirectory,
                                   NotFound,
                                   OpenFile,
)
from imagefs.catalog.scan import DirNode
from imagefs.catalog.scope import Scope
from imagefs.catalog.tree import Catalog

__all__ = [
    "COMPRESSION_SUFFIXES", "INFO_SUFFIX", "Attr", "AttrPolicy", "Catalog", "DirNode",
    "DirectoryNode", "FileLikeNode", "FileNode", "ImageEntry", "ImageNode", "InfoNode",
    "LinkNode", "Node", "NoSuchAttribute", "NotADirectory", "NotFound", "OpenFile", "Scope",
    "virtual_name",
]
