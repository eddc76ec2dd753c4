class Inventory
  attr_reader :items

  def initialize(items = [])
    @items = items
  end

  def total
    @items.sum { |item| item[:quantity] }
  end

  def find(name)
    @items.find { |item| item[:name] == █ }
  end

  def empty?
    @items.empty?
  end
end
