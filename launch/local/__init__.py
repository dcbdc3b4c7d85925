"""The launch scripts' --local backend: the image's own programs on this machine (programs.py runs them;
jobs.py, tuner.py, endpoint.py and gateway.py build SageMaker's behaviour around them)."""
import os


def docker_run(name: str, env: dict | None = None, volumes: dict | None = None, isolated: bool = False) -> list[str]:
    """`docker run` on the host network (no bridge networks here), or with no network at all
    (isolated: SageMaker's network isolation), removed when done; append IMAGE PROGRAM."""
    return [os.environ.get("DOCKER", "docker"), "run", "--rm", f"--network={'none' if isolated else 'host'}",
            "--name", name,
            *[a for key, value in (env or {}).items() for a in ("-e", f"{key}={value}")],
            *[a for host, inside in (volumes or {}).items() for a in ("-v", f"{host}:{inside}")]]


def add_arguments(parser, job_dir: bool = True, endpoint: bool = False) -> None:
    """The --local flags the launch scripts share."""
    parser.add_argument("--local", action="store_true", help="run on this machine with the image's own programs")
    parser.add_argument("--local-runner", choices=("native", "docker"), default="native",
                        help="natively (default) or in the image (needs image_uri)")
    if job_dir:
        parser.add_argument("--local-dir", default="local-jobs", help="with --local: where job folders go")
    if endpoint:
        parser.add_argument("--port", type=int, default=8080, help="with --local: the gateway's port on 127.0.0.1")
