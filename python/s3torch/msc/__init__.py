"""Drop-in for multi-storage-client's DCP classes: change

    from multistorageclient.contrib.torch.filesystem import MultiStorageFileSystemReader, MultiStorageFileSystemWriter

to ``from s3torch.msc import ...``. Paths are ``msc://<profile>/<path>`` (profiles from MSC's
own config file, S3 and S3-compatible providers) or ``s3://<bucket>/<prefix>`` (through the
config's ``path_mapping`` when an entry matches). A path s3torch cannot use raises
:class:`MSCConfigError` at construction, naming the config file and the profile.
"""

from ._config import MSCConfigError, config_search_paths
from ._filesystem import MultiStorageFileSystem, MultiStorageFileSystemReader, MultiStorageFileSystemWriter

__all__ = [
    "MultiStorageFileSystem",
    "MultiStorageFileSystemReader",
    "MultiStorageFileSystemWriter",
    "MSCConfigError",
    "config_search_paths",
]
