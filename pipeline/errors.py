"""Error types. Configuration errors stop a run before any work; sample errors become manifest rows."""


class ConfigError(ValueError):
    """Bad configuration (unknown dataset or codec, bad spec value, empty or wrong root)."""


class SampleError(Exception):
    """A problem with one sample: recorded as a manifest row with status 'error', the run goes on."""


class MissingWeightsError(ConfigError):
    """A learned codec's weights are not where they are expected and cannot be downloaded."""


class OutputError(Exception):
    """The output location cannot be written (read-only, full, no permission, no such bucket): the run
    stops with this one-line message, and nothing partial is left under a final name."""
