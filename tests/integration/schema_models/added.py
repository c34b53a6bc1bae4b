"""The article with a field added (read from the table's ``summary`` column)."""

from pydantic import BaseModel


class Article(BaseModel):
    id: int
    title: str
    body: str
    summary: str | None = None
