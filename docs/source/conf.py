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
# Section titles are not targets by themselves: every section cited from
# code or tests has an explicit label (``.. _protocol-delivery:``).
autosectionlabel_prefix_document = True
autodoc_member_order = 'bysource'
autodoc_typehints = 'none'
