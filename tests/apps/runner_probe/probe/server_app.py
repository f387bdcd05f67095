"""An empty ServerApp (the runner tests drive the ClientApp directly)."""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    del grid, context
