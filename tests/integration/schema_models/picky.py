"""The article with ``summary`` added and a validator that refuses article 3."""

from pydantic import BaseModel, field_validator


class Article(BaseModel):
    id: int
    title: str
    body: str
    summary: str | None = None

    @field_validator("id")
    @classmethod
    def _not_three(cls, value: int) -> int:
        if value == 3:
            raise ValueError("article 3 is refused")
        return value
