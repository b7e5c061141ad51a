# pytest-greenserve is loaded through its pytest11 entry point; options and ini keys
# (greenserve_*) live in the root pyproject.toml / pytest.ini / tox.ini.
