"""The two error kinds a user sees: a model that cannot be compiled, an input that cannot be run."""


class CompileError(ValueError):
    """The model (or an attribute, shape or type in it) is invalid or unsupported.

    ``node`` names the offending node when there is one; the message already includes it.
    """

    def __init__(self, message: str, node: str | None = None):
        self.node = node
        super().__init__(f"node '{node}': {message}" if node else message)


class ScheduleError(CompileError):
    """A schedule primitive was applied where it would change the result (or cannot apply)."""


class InputError(ValueError):
    """An input given at call time does not match what the compiled model expects."""
