"""The agent's RPC API version (docs: protocol-versions) and package version."""

RPC_API_VERSION = '1.1'


def package_version():
    try:
        from importlib.metadata import version
        return version('compute-agent')
    except Exception:  # not installed (running from a source tree)
        return 'unknown'
