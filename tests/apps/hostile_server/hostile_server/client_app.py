"""Never reached: the ServerApp below sends nothing a site accepts."""

from flwr.clientapp import ClientApp

app = ClientApp()
