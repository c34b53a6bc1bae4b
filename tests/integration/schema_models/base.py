"""The article as first indexed."""

from pydantic import BaseModel


class Article(BaseModel):
    id: int
    title: str
    body: str
