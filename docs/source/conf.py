"""Sphinx configuration of the compute-agent documentation.

Built with ``tox -e docs`` (or ``tools/test.sh``) as
``sphinx-build -W --keep-going -b html docs/source docs/build/html``:
every warning is an error. The theme is Sphinx's stock one.
"""

project = 'compute-agent'
copyright = 'compute-agent developers'
author = 'compute-agent developers'

extensions = [
    'sphinx.ext.autodoc',
    # ``.. show-options::`` renders the options from the
    # ``oslo.config.opts`` entry point (compute_agent.conf.opts:list_opts).
    'oslo_config.sphinxext',
]

root_doc = 'index'
exclude_patterns = []
nitpicky = False
html_theme = 'alabaster'
html_theme_options = {
    'description': 'a nova-compute-style libvirt host agent',
    'page_width': '1100px',
    'sidebar_width': '240px',
}
html_static_path = []
# No autosectionlabel: every section cited from code or tests has an
# explicit, stable label (``.. _protocol-delivery:``), so retitling a
# section breaks no citation.
autodoc_member_order = 'bysource'
autodoc_typehints = 'none'
