"""
Packaging for vtwisted.

C{twisted/plugins} is a namespace directory shared with Twisted itself: it has
no C{__init__.py} and is listed by name so that C{pip install .} ships the
C{twistd vswitch} plugin.
"""

from setuptools import find_packages, setup

setup(
    name="vtwisted",
    version="0.1.0",
    description="Virtual Distributed Ethernet (VDE) switch as a Twisted service",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=[*find_packages(include=["vtwisted", "vtwisted.*"]), "twisted.plugins"],
    package_data={"twisted.plugins": ["vtwisted_vswitch.py"]},
    include_package_data=False,
    install_requires=[
        "twisted[tls,conch]>=24.7",
        "zope.interface>=6",
        "pyopenssl>=24",
        "service-identity>=24",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "hypothesis>=6.100",
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0.5",
        ],
    },
    classifiers=[
        "Framework :: Twisted",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Networking",
    ],
)
