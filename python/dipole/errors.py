"""dipole.Error and one subclass per library status (dipole_status)."""


class Error(RuntimeError):
    """A dipole failure. status is the library's dipole_status (an OpenCL code passes through
    as it is), status_name its name ("DIPOLE_ERR_INVALID_ARG", "CL_OUT_OF_RESOURCES"),
    message the library's own words: the argument, the OpenCL call, or a kernel build log."""

    status = None

    def __init__(self, message, status=None, status_name=None):
        if status is not None:
            self.status = status
        self.status_name = status_name
        self.message = message
        super().__init__(f"{status_name}: {message}" if status_name else message)


class InvalidArgError(Error, ValueError):
    """DIPOLE_ERR_INVALID_ARG, and the front's own checks of shapes, dtypes and devices."""
    status = -2001


class NoPlatformError(Error):
    status = -2002


class NoDeviceError(Error):
    status = -2003


class BadSelectorError(Error, ValueError):
    status = -2004


class UnsupportedError(Error):
    status = -2005


class BuildError(Error):
    """A kernel failed to compile; the message carries the build log."""
    status = -2006


class OutOfHostMemoryError(Error, MemoryError):
    status = -2007


class BufferRangeError(Error):
    status = -2008


class CLBlastError(Error):
    status = -2009


class KernelSourceError(Error):
    status = -2010


class InternalError(Error):
    status = -2011


class OpenCLError(Error):
    """An OpenCL call failed; status is its CL_* code."""


_BY_STATUS = {c.status: c for c in (InvalidArgError, NoPlatformError, NoDeviceError,
                                     BadSelectorError, UnsupportedError, BuildError,
                                     OutOfHostMemoryError, BufferRangeError, CLBlastError,
                                     KernelSourceError, InternalError)}


def error_for(status, message, status_name):
    """The exception for a library status."""
    return _BY_STATUS.get(status, OpenCLError)(message, status, status_name)
